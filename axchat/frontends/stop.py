"""`axchat stop`: ask the local daemon to drain and exit, and wait until it has.

It sends SIGTERM rather than a protocol message: the operating system then decides who
may stop it (its own user or root, not every member of the system service's group), and
it takes the same drain path as `systemctl stop`. So it works only for a daemon on this
machine (an ipc socket). The process signalled is the one the kernel says is listening
on the socket (`SO_PEERCRED`), and only when that is the pid the daemon reports in
`status`: whatever answers on a socket can claim any pid.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from axchat import endpoint as ep
from axchat.connection import DaemonUnavailable, RequestFailed, connect

EXIT_NO_DAEMON = 2
EXIT_FAILED = 1
# A local connect is answered by the kernel at once; this bounds a wedged listen queue.
CONNECT_TIMEOUT_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axchat stop", description="Stop the axchat daemon: it drains, then exits.")
    p.add_argument("--socket", help="daemon socket path (default: $AXCHAT_SOCKET or the per-user default)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to exit (default: 60)")
    return p


def _exited(pidfd: int, timeout_s: float) -> bool:
    readable, _, _ = select.select([pidfd], [], [], timeout_s)
    return bool(readable)


class ListenerGone(Exception):
    """Nothing listens on the socket any more."""


@dataclass(frozen=True)
class Listener:
    """The process listening on a Unix socket, as the kernel recorded it at `listen()`;
    `pidfd` names that very process, whatever later reuses its pid number."""

    pid: int
    uid: int
    pidfd: int


def listener_of(path: Path) -> Listener:
    """Who listens at `path`: connect, ask the kernel (`SO_PEERCRED`) and hold a pidfd
    on it while still connected. Raises ListenerGone when nothing listens there."""
    creds = struct.Struct("3i")  # struct ucred: pid, uid, gid
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ListenerGone from None
        pid, uid, _gid = creds.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, creds.size))
        if pid <= 0:
            # The listener is in a pid namespace this one cannot see (a container).
            return Listener(pid, uid, -1)
        try:
            return Listener(pid, uid, os.pidfd_open(pid))
        except ProcessLookupError:
            raise ListenerGone from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    endpoint = ep.client_endpoint(args.socket)
    path = ep.ipc_path(endpoint)
    if path is None:
        print(f"axchat stop: {endpoint} is not a local socket; stop that daemon where it runs", file=sys.stderr)
        return EXIT_FAILED
    try:
        with connect(endpoint) as client:
            reported = client.status().pid
        listener = listener_of(path)
    except (DaemonUnavailable, ListenerGone):
        # Not the clients' "start one with ...": someone stopping wants none running.
        print(f"axchat stop: no axchat daemon is running at {path}; nothing to stop", file=sys.stderr)
        return EXIT_NO_DAEMON
    except RequestFailed as exc:
        print(f"axchat stop: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return _stop(listener, reported, path, args.timeout)
    finally:
        if listener.pidfd >= 0:
            os.close(listener.pidfd)


def _stop(listener: Listener, reported: int, path: Path, timeout_s: float) -> int:
    pid = listener.pid
    if listener.pidfd < 0:
        print(
            f"axchat stop: the daemon at {path} runs in another pid namespace (a container); stop it there",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if reported != pid:
        print(
            f"axchat stop: the process listening at {path} is pid {pid} (uid {listener.uid}) but says it is "
            f"pid {reported}; signalling neither",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        signal.pidfd_send_signal(listener.pidfd, signal.SIGTERM)
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
    if not _exited(listener.pidfd, timeout_s):
        print(f"axchat stop: the daemon (pid {pid}) is still draining after {timeout_s:g}s", file=sys.stderr)
        return EXIT_FAILED
    print(f"axchat stop: stopped the daemon (pid {pid}) in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
