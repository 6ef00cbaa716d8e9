"""`make run` helper: make sure a daemon serves the model asked for on the default
socket (the one every client finds without flags), starting or restarting it.

Not the service (that is systemd's job): a detached process with its log in a file.
It prints only its own progress; when the daemon cannot start, the lines that start
wrote to the log, and nothing older.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from axchat import autostart, connection
from axchat import endpoint as ep
from axchat.frontends import stop as stop_command
from axchat.models.resolve import ModelNotFound, ensure_available, resolve

READY_TIMEOUT_S = 600.0  # a large --model can take minutes to load


def _running_model(socket: str) -> str | None:
    """The model the daemon on `socket` serves, or None when none answers."""
    welcome = connection.probe(socket, timeout_s=1.0)
    return None if welcome is None else welcome.model


def _names_of(model: str) -> set[str]:
    """Every spelling of `model` a daemon may report: catalog name, hub id, and for a
    directory its name (what the daemon shows; two directories of one name look alike)."""
    try:
        names = set(resolve(model).aliases)
    except ModelNotFound:
        names = {model}
    path = Path(model).expanduser()
    return names | ({path.resolve().name} if path.exists() else set())


def ensure(socket: str, log: Path, model: str | None, extra: list[str]) -> int:
    if model is not None:
        try:  # before stopping a daemon that works, for one that cannot start
            ensure_available(resolve(model))
        except ModelNotFound as exc:
            print(f"not starting a daemon: {exc}", file=sys.stderr)
            return 1
    running = _running_model(socket)
    if running is not None:
        if model is None or running in _names_of(model):
            print(f"a daemon is already serving {running} at {socket}", file=sys.stderr)
            return 0
        print(f"the daemon at {socket} serves {running}, not {model}: restarting it", file=sys.stderr)
        if stop_command.main(["--socket", socket]) != 0:
            return 1
    return start(socket, log, [*(["--model", model] if model else []), *extra])


def start(socket: str, log: Path, extra: list[str]) -> int:
    path = ep.ipc_path(ep.to_zmq(socket))
    if path is not None:
        try:
            ep.prepare_private_dir(path.parent)
        except ep.EndpointError as exc:
            print(f"cannot use {socket}: {exc}", file=sys.stderr)
            return 1
    print(f"starting the daemon (log: {log})...", file=sys.stderr)
    try:
        spawned = autostart.spawn_daemon(socket, log, extra, deadline=time.monotonic() + READY_TIMEOUT_S)
    except autostart.StartFailed as exc:
        if exc.returncode is None:
            print(f"the daemon {exc.how}; see {log}", file=sys.stderr)
            return 1
        print(f"the daemon {exc.how}; what it logged:", file=sys.stderr)
        print(exc.logged.rstrip("\n"), file=sys.stderr)
        if exc.next_step() is not None:
            print(exc.next_step(), file=sys.stderr)
        return 1
    print(f"daemon ready (pid {spawned.pid}, {spawned.elapsed_s:.1f}s)", file=sys.stderr)
    _show_model_hint(spawned.logged)
    return 0


def _show_model_hint(logged: str) -> None:
    """Repeat the daemon's "how to use a real model" line, which would otherwise sit
    unseen in its log file."""
    for line in logged.splitlines():
        if "no --model given" in line:
            print(line.split(": ", 1)[-1], file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m axchat.devrun")
    p.add_argument("action", choices=["start"])
    p.add_argument("--socket", help="default: where every client looks ($AXCHAT_SOCKET or the per-user default)")
    p.add_argument("--model", help="the model to serve; a running daemon with another is restarted")
    p.add_argument("--log", type=Path, default=Path(".cache/run/daemon.log"))
    args, extra = p.parse_known_args(argv)
    socket = args.socket or ep.describe(ep.client_endpoint(None))
    return ensure(socket, args.log, args.model, extra)


if __name__ == "__main__":
    sys.exit(main())
