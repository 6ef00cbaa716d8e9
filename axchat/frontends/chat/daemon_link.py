"""The full-screen chat's link to the daemon: connect (backing off to a cap, starting a
daemon the first time when none answers), a heartbeat when the line is quiet, and what
a lost daemon means for the answer in flight. Part of `ChatApp` (a mixin): it reads and
sets the app's connection state and speaks through its status line."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO, cast

from textual import work

from axchat import connection
from axchat.aclient import AsyncClient, DaemonUnavailable, RequestFailed
from axchat.backoff import Backoff
from axchat.endpoint import client_endpoint, describe
from axchat.frontends.chat.start_progress import StatusLineProgress
from axchat.protocol import v1

if TYPE_CHECKING:
    from textual.app import App

    from axchat.frontends.chat.widgets import StatusLine

CONNECT_TIMEOUT_S = 3.0
HEARTBEAT_S = 5.0  # ask the daemon for its status after this long without traffic
RECONNECT_FIRST_S = 0.5
RECONNECT_CAP_S = 8.0


class DaemonLink:
    socket: str | None
    start_daemon: bool
    reconnect_cap_s: float
    heartbeat_s: float
    client: AsyncClient | None
    welcome: v1.Welcome | None
    _last_traffic: float
    _pinging: bool
    _awaiting_restart: bool

    if TYPE_CHECKING:  # the app's, used here

        @property
        def status_line(self) -> StatusLine: ...
        def refresh_footer(self) -> None: ...
        def answer_lost(self, reason: str) -> None: ...

    @work(exclusive=True, group="connect")
    async def connect_daemon(self, lost: str | None = None) -> None:
        """Hello until a daemon answers, backing off to a cap."""
        old, self.client, self.welcome = self.client, None, None
        if old is not None:
            await old.close()
        self.refresh_footer()
        where = describe(client_endpoint(self.socket))
        if lost is None:
            self.status_line.say(f"connecting to the daemon at {where}…")
        else:
            self.status_line.say(f"daemon gone ({lost}); reconnecting…", error=True)
        first_start = self.start_daemon and lost is None
        # A stream autostart writes to as it would to stderr (it is one, in all it uses).
        progress = cast(TextIO, StatusLineProgress(cast("App[None]", self), self.status_line.say)) if first_start else None

        def unavailable(exc: DaemonUnavailable | RequestFailed, pause_s: float) -> None:
            self.status_line.say(f"daemon unavailable: {exc} (retrying in {pause_s:g}s)", error=True)

        self.client, self.welcome = await connection.connect_async(
            self.socket,
            backoff=Backoff(RECONNECT_FIRST_S, self.reconnect_cap_s),
            unavailable=unavailable,
            start_progress=progress,
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )
        self._last_traffic = time.monotonic()
        self.status_line.say(f"connected: {self.welcome.model} on {self.welcome.device} ({where})")
        self.refresh_footer()

    def check_daemon(self) -> None:
        quiet = time.monotonic() - self._last_traffic >= self.heartbeat_s
        if self.client is not None and quiet and not self._pinging and not self._awaiting_restart:
            self._pinging = True  # one ping at a time: a new one must not cancel the one waiting
            self.ping_daemon(self.client)

    @work(group="heartbeat")
    async def ping_daemon(self, client: AsyncClient) -> None:
        try:
            gone = await connection.heartbeat(client)
        finally:
            self._pinging = False
        if gone is None:
            self._last_traffic = time.monotonic()
        elif client is self.client:
            self.daemon_lost(gone)

    def daemon_lost(self, reason: str) -> None:
        self.answer_lost(reason)
        self.connect_daemon(lost=reason)
