"""`make run` helper: start a background daemon for this checkout, or stop it.

Not the service (that is systemd's job): a detached process with its log in a file
and its pid beside the socket, so `make run` twice reuses the same daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from axchat import endpoint as ep
from axchat.client import Client, DaemonUnavailable

READY_TIMEOUT_S = 600.0  # a large --model can take minutes to load


def _pid_file(socket: str) -> Path:
    path = ep.ipc_path(ep.to_zmq(socket))
    return (path.parent if path else Path(".cache/run")) / "axchat.pid"


def _answers(socket: str) -> bool:
    try:
        with Client(socket, connect_timeout_s=1.0) as client:
            client.hello()
        return True
    except DaemonUnavailable:
        return False


def start(socket: str, log: Path, extra: list[str]) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "axchat", "serve", "--socket", socket, *extra],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `make`, ignores its Ctrl-C
        )
    _pid_file(socket).write_text(str(proc.pid))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            code = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if _answers(socket):
                print(f"daemon ready (pid {proc.pid})", file=sys.stderr)
                _show_model_hint(log, offset)
                return 0
            continue
        print(f"the daemon exited with code {code}; its log ({log}):", file=sys.stderr)
        print(log.read_text()[-4000:], file=sys.stderr)
        return 1
    print(f"the daemon was not ready after {READY_TIMEOUT_S:.0f}s; see {log}", file=sys.stderr)
    return 1


def _show_model_hint(log: Path, offset: int) -> None:
    """Repeat the daemon's "how to use a real model" line, which would otherwise sit
    unseen in its log file."""
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            if "no --model given" in line:
                print(line.split(": ", 1)[-1], file=sys.stderr)


def stop(socket: str) -> int:
    pid_file = _pid_file(socket)
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        print("no daemon started by `make run` is known here", file=sys.stderr)
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)
    print(f"sent SIGTERM to the daemon (pid {pid})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m axchat.devrun")
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--socket", required=True)
    p.add_argument("--log", type=Path, default=Path(".cache/run/daemon.log"))
    args, extra = p.parse_known_args(argv)
    return start(args.socket, args.log, extra) if args.action == "start" else stop(args.socket)


if __name__ == "__main__":
    sys.exit(main())
