"""`axchat stop`: ask the local daemon to drain and exit, and wait until it has.

It sends SIGTERM to the pid the daemon reports in `status`, rather than a protocol
message: the operating system then decides who may stop it (its own user or root,
not every member of the system service's group), and it takes the same drain path as
`systemctl stop`. So it works only for a daemon on this machine (an ipc socket).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time

from axchat import endpoint as ep
from axchat.client import DaemonUnavailable, RequestFailed, connect

EXIT_NO_DAEMON = 2
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axchat stop", description="Stop the axchat daemon: it drains, then exits.")
    p.add_argument("--socket", help="daemon socket path (default: $AXCHAT_SOCKET or the per-user default)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to exit (default: 60)")
    return p


def wait_exit(pid: int, timeout_s: float) -> bool:
    """True once `pid` has exited; it is not our child, so no waitpid."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    endpoint = ep.to_zmq(args.socket)
    if ep.ipc_path(endpoint) is None:
        print(f"axchat stop: {endpoint} is not a local socket; stop that daemon where it runs", file=sys.stderr)
        return EXIT_FAILED
    try:
        with connect(args.socket) as client:
            pid = client.status().pid
    except DaemonUnavailable:
        # Not the clients' "start one with ...": someone stopping wants none running.
        where = ep.describe(ep.client_endpoint(args.socket))
        print(f"axchat stop: no axchat daemon is running at {where}; nothing to stop", file=sys.stderr)
        return EXIT_NO_DAEMON
    except RequestFailed as exc:
        print(f"axchat stop: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if pid <= 0:
        print("axchat stop: the daemon did not say its pid", file=sys.stderr)
        return EXIT_FAILED
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    except PermissionError:
        print(
            f"axchat stop: the daemon (pid {pid}) runs as another user; if it is the system service, "
            "use `sudo systemctl stop axchat`",
            file=sys.stderr,
        )
        return EXIT_FAILED
    started = time.monotonic()
    if not wait_exit(pid, args.timeout):
        print(f"axchat stop: the daemon (pid {pid}) is still draining after {args.timeout:g}s", file=sys.stderr)
        return EXIT_FAILED
    print(f"axchat stop: stopped the daemon (pid {pid}) in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
