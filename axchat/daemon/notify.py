"""systemd's notify protocol, spoken directly: one datagram per state change to the
socket named by `$NOTIFY_SOCKET` (a path, or an abstract socket when it starts with `@`).

No library: the protocol is one `sendto` of newline-separated `KEY=VALUE` lines, and
outside systemd (no `NOTIFY_SOCKET`) every call is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# How often STATUS= is refreshed when nothing else wakes the pinger.
STATUS_REFRESH_S = 1.0
# During the start-up load, each tick asks systemd for this much more time from now
# (EXTEND_TIMEOUT_USEC): a slow load is not killed by TimeoutStartSec, while a loop
# that stops turning is, this long after its last word.
EXTEND_TIMEOUT_S = 30.0


class Notifier:
    """Sends notify datagrams; silently does nothing when not run under systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self.watchdog_usec = watchdog_usec
        if address:
            # An abstract socket's name starts with a NUL byte on the wire.
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        return None if not self.watchdog_usec else self.watchdog_usec / 2e6

    def send(self, **fields: str | int) -> None:
        if self._sock is None or self._address is None:
            return
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            # The manager is gone or its socket is full: nothing to do but say so once.
            log.warning("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)

    def status(self, text: str, *, extend_timeout_s: float | None = None) -> None:
        if extend_timeout_s is None:
            self.send(STATUS=text)
        else:
            self.send(STATUS=text, EXTEND_TIMEOUT_USEC=_usec(extend_timeout_s))

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more from now to finish starting (or stopping)."""
        self.send(EXTEND_TIMEOUT_USEC=_usec(seconds))

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _usec(seconds: float) -> int:
    return int(seconds * 1_000_000)


def watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """`$WATCHDOG_USEC` when it is meant for this process (`$WATCHDOG_PID` unset or ours)."""
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec if usec > 0 else None


async def ping_watchdog(
    notifier: Notifier,
    status: Callable[[], str | None] | None = None,
    extending: Callable[[], bool] | None = None,
) -> None:
    """Run on the event loop for the daemon's life: a ping per half timeout proves the
    loop itself turns, so a wedged loop stops pinging and systemd restarts us. Also
    refreshes `STATUS=` when `status()` has something new to say, and extends the start
    timeout each tick while `extending()` says the long start-up load is running."""
    interval = notifier.watchdog_interval_s
    tick = min(interval, STATUS_REFRESH_S) if interval else STATUS_REFRESH_S
    last_ping = 0.0
    last_status: str | None = None
    loop = asyncio.get_running_loop()
    while True:
        now = loop.time()
        # Half a tick of slack: a sleep that wakes a hair early must not skip a ping.
        if interval is not None and now - last_ping >= interval - tick / 2:
            notifier.watchdog()
            last_ping = now
        text = status() if status is not None else None
        if text is not None and text != last_status:
            notifier.status(text)
            last_status = text
        if extending is not None and extending():
            notifier.extend_timeout(EXTEND_TIMEOUT_S)
        await asyncio.sleep(tick)


