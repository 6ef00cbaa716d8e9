"""Autostart for people without the service: when no daemon answers, a frontend starts
one for the current user in the background and waits until it serves; `make run`
starts its daemon with the same `spawn_daemon`.

A lock file beside the socket makes concurrent frontends start exactly one daemon:
whoever holds it starts and waits; the others, once they get it, find a daemon that
answers. Imports only the standard library and the client, like every frontend path;
`axchat.connection` decides when to call it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from axchat import endpoint as ep
from axchat import exit_status
from axchat.backoff import Backoff
from axchat.client import Client, DaemonUnavailable, RequestFailed, UntrustedSocket

ENV_NO_AUTOSTART = "AXCHAT_NO_AUTOSTART"
LOCK_NAME = "axchat.lock"
# The first start may load a large model (the default, axchat-mini, takes a second or two).
READY_TIMEOUT_S = 600.0
PROGRESS_EVERY_S = 1.0
SPAWN_POLL_S = 0.2  # how often a starting daemon is checked on


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
        with Client(socket, connect_timeout_s=0.5) as client:
            client.hello()
            return True
    except (DaemonUnavailable, RequestFailed):
        return False


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
    tty = progress.isatty()
    last_report = time.monotonic()

    def started(pid: int) -> None:
        progress.write(f"axchat: no daemon was running; starting one (pid {pid}, log {log})" + ("" if tty else "\n"))
        progress.flush()

    def waiting(elapsed_s: float) -> None:
        nonlocal last_report
        now = time.monotonic()
        if tty and now - last_report >= PROGRESS_EVERY_S:
            progress.write(f"\raxchat: starting the daemon, loading the model... {elapsed_s:.0f}s")
            progress.flush()
            last_report = now

    try:
        spawned = spawn_daemon(socket_path, log, ["--autostarted"], deadline=deadline, started=started, waiting=waiting)
    except StartFailed as exc:
        if exc.returncode is None:
            raise DaemonUnavailable(f"the daemon it started {exc.how}; see {log}") from None
        hint = "" if exc.next_step() is None else f"\n{exc.next_step()}"
        raise DaemonUnavailable(f"the daemon it started {exc.how}; the end of {log}:\n{exc.logged[-2000:]}{hint}") from None
    progress.write(("\r\033[K" if tty else "") + f"axchat: daemon ready after {spawned.elapsed_s:.1f}s\n")
    progress.flush()


# ---------------------------------------------------------------- the one way a daemon is started


class StartFailed(DaemonUnavailable):
    """A daemon we started exited before it served (`returncode`), or did not serve in
    time (`returncode` None). `how` says which in words; `logged` is what this start
    wrote to the log, without the lines of earlier daemons."""

    def __init__(self, how: str, logged: str, returncode: int | None) -> None:
        super().__init__(how)
        self.how = how
        self.logged = logged
        self.returncode = returncode

    def next_step(self) -> str | None:
        """Where to go after a crash (it died of a signal); None otherwise."""
        return exit_status.doctor_hint() if exit_status.signal_of(self.returncode) is not None else None


@dataclass
class Spawned:
    pid: int
    elapsed_s: float
    logged: str  # what it wrote to the log up to serving


def spawn_daemon(
    socket: str,
    log: Path,
    serve_args: list[str],
    *,
    deadline: float,
    started: Callable[[int], None] = lambda pid: None,
    waiting: Callable[[float], None] = lambda elapsed_s: None,
) -> Spawned:
    """Start `axchat serve --socket socket *serve_args` detached, its output appended to
    `log`, and return once it answers a hello. `started(pid)` runs once it is launched,
    `waiting(elapsed_s)` between checks. Raises StartFailed when it exits first or is
    not serving by `deadline` (monotonic). Used by autostart and by `make run`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    begun = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "axchat", "serve", "--socket", socket, *serve_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # outlives this client and ignores its Ctrl-C
        )
    started(proc.pid)
    endpoint = ep.to_zmq(socket)
    while True:
        try:
            code = proc.wait(timeout=SPAWN_POLL_S)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            raise StartFailed(exit_status.describe(code, "while loading the model"), _logged_since(log, offset), code)
        if _answers(endpoint):
            return Spawned(proc.pid, time.monotonic() - begun, _logged_since(log, offset))
        if time.monotonic() >= deadline:
            how = f"was not ready after {deadline - begun:.0f}s"
            raise StartFailed(how, _logged_since(log, offset), None)
        waiting(time.monotonic() - begun)


def _logged_since(log: Path, offset: int) -> str:
    """This start's lines only: earlier daemons' lines are not this failure's story."""
    if not log.exists():
        return ""
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")
