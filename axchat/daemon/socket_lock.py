"""One daemon per socket: an exclusive `flock` on a file beside the socket, taken before
the model loads and held until the process exits (the kernel drops it even on kill -9).

Probing the socket is not enough: two daemons started at the same moment both find it
free, both bind, and the second is unreachable while stopping the first removes the
socket file under it. Not the autostart lock (`axchat.lock`): a frontend holds that
while the daemon it started comes up.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_SUFFIX = ".lock"
# How long a refused daemon waits for the winner to write its pid. The winner writes it
# right after taking the lock, so this is only ever waited out when it died meanwhile.
HOLDER_WAIT_S = 2.0


class SocketTaken(Exception):
    """Another daemon holds the socket; the message names its pid."""


def lock_path(socket_path: Path) -> Path:
    return socket_path.with_name(socket_path.name + LOCK_SUFFIX)


def take(socket_path: Path) -> int:
    """Hold the socket's lock; returns the file descriptor, which must stay open."""
    path = lock_path(socket_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise SocketTaken(
            f"another axchat daemon (pid {holder}) is already serving at {socket_path} (it holds {path})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(fd: int) -> str:
    """The pid of the daemon holding the lock, as it wrote it. It writes it just after
    taking the lock, so a daemon started at the same moment can read the file before
    that (empty) or before its truncation (the pid of an earlier, dead holder): wait,
    with a deadline, for a pid that names a live process."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit() and _alive(int(text)):
            return text
        if time.monotonic() >= deadline:
            return "unknown"
        time.sleep(0.01)  # the winner is between flock and pwrite; a poll, not a synchronisation


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process (a system service's daemon)
    return True
