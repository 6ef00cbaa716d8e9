"""Autostart for people without the service: when no daemon answers, a frontend starts
one for the current user in the background and waits until it serves.

A lock file beside the socket makes concurrent frontends start exactly one daemon:
whoever holds it starts and waits; the others, once they get it, find a daemon that
answers. Imports only the standard library and the client, like every frontend path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from axchat import endpoint as ep
from axchat import exit_status
from axchat.client import Client, DaemonUnavailable, KeysRefused, RequestFailed, UntrustedSocket
from axchat.client import connect as connect_client
from axchat.connection import Backoff

ENV_NO_AUTOSTART = "AXCHAT_NO_AUTOSTART"
LOCK_NAME = "axchat.lock"
# The first start may load a large model (the default, axchat-mini, takes a second or two).
READY_TIMEOUT_S = 600.0
PROGRESS_EVERY_S = 1.0


def enabled(no_autostart_flag: bool = False) -> bool:
    value = os.environ.get(ENV_NO_AUTOSTART, "").strip().lower()
    return not no_autostart_flag and value not in ("1", "true", "yes", "on")


def log_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "axchat" / "daemon.log"


@contextlib.contextmanager
def _locked(path: Path, deadline: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        backoff = Backoff(0.05, 0.5)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DaemonUnavailable(f"another axchat client held {path} too long while starting the daemon") from None
                time.sleep(backoff.next_pause())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _answers(socket: str) -> bool:
    try:
        with connect_client(socket, connect_timeout_s=0.5):
            return True
    except (DaemonUnavailable, RequestFailed):
        return False


def connect(socket: str | None, *, no_autostart: bool = False, progress: TextIO = sys.stderr, wait_s: float = 0.0) -> Client:
    """A client that has had its `welcome`: from the daemon that answers, else (unless
    autostart is off) from one started now, its progress written to `progress`.
    Raises DaemonUnavailable when neither works. `ask` and `chat --plain` both use it."""
    if not enabled(no_autostart):
        return connect_client(socket, wait_s=wait_s)
    try:
        return connect_client(socket)
    except (KeysRefused, UntrustedSocket):
        raise  # starting a daemon would not help: keys refused, or not our directory
    except DaemonUnavailable:
        start_daemon(socket, progress)
        return connect_client(socket)


def start_daemon(socket: str | None, progress: TextIO = sys.stderr) -> None:
    """Start a daemon on `socket` unless one answers there by the time we hold the
    lock, and return once it serves. Raises DaemonUnavailable on failure."""
    endpoint = ep.to_zmq(socket)
    path = ep.ipc_path(endpoint)
    if path is None:
        raise DaemonUnavailable(f"no axchat daemon answers at {endpoint}, and a tcp:// daemon is not started automatically")
    refusal = ep.untrusted_reason(endpoint)
    if refusal is not None:
        raise UntrustedSocket(refusal)  # never start a daemon in someone else's directory
    try:
        ep.prepare_private_dir(path.parent)
    except ep.EndpointError as exc:
        raise DaemonUnavailable(str(exc)) from None
    deadline = time.monotonic() + READY_TIMEOUT_S
    with _locked(path.parent / LOCK_NAME, deadline):
        if _answers(endpoint):
            return  # another client started it while we waited for the lock
        _spawn_and_wait(endpoint, str(path), deadline, progress)


def _spawn_and_wait(endpoint: str, socket_path: str, deadline: float, progress: TextIO) -> None:
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "axchat", "serve", "--socket", socket_path, "--autostarted"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # outlives this client and ignores its Ctrl-C
        )
    started = time.monotonic()
    tty = progress.isatty()
    progress.write(f"axchat: no daemon was running; starting one (pid {proc.pid}, log {log})" + ("" if tty else "\n"))
    progress.flush()
    last_report = started
    while True:
        try:
            code = proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            hint = f"\n{exit_status.doctor_hint()}" if exit_status.signal_of(code) is not None else ""
            how = exit_status.describe(code, "while loading the model")
            raise DaemonUnavailable(f"the daemon it started {how}; the end of {log}:\n{tail}{hint}")
        if os.path.exists(socket_path) and _answers(endpoint):
            break
        now = time.monotonic()
        if now >= deadline:
            raise DaemonUnavailable(f"the daemon it started was not ready after {READY_TIMEOUT_S:.0f}s; see {log}")
        if tty and now - last_report >= PROGRESS_EVERY_S:
            progress.write(f"\raxchat: starting the daemon, loading the model... {now - started:.0f}s")
            progress.flush()
            last_report = now
    progress.write(("\r\033[K" if tty else "") + f"axchat: daemon ready after {time.monotonic() - started:.1f}s\n")
    progress.flush()
