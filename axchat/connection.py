"""The connection manager every client of the daemon goes through: connect, hello,
back off, start a daemon when none answers, and ask once more after a restart.

`connect` is the blocking face (`ask`, `chat --plain`, `status`, `stop`, `make run`);
`connect_async`, `hello_again` and `heartbeat` the asyncio one for the TUI, and
`open_async` with `status_now` for the web bridge. The transports they drive are `client.Client` and `aclient.AsyncClient`; the daemon it
starts comes from `autostart`. Imports only pyzmq, msgspec and the protocol beneath
those, so `axchat ask` still starts in milliseconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO, TypeVar

import zmq

from axchat import autostart
from axchat.aclient import AsyncClient
from axchat.backoff import Backoff
from axchat.client import Client
from axchat.daemon_socket import (
    HOW_TO_START,
    DaemonRestarted,
    DaemonUnavailable,
    KeysRefused,
    RequestFailed,
    UntrustedSocket,
)
from axchat.protocol import v1

__all__ = [
    "HOW_TO_START",
    "RESTART_WAIT_S",
    "Backoff",
    "DaemonRestarted",
    "DaemonUnavailable",
    "KeysRefused",
    "RequestFailed",
    "UntrustedSocket",
    "connect",
    "connect_async",
    "heartbeat",
    "hello_again",
    "open_async",
    "probe",
    "restart_backoff",
    "retry_once",
    "retry_once_async",
    "status_now",
]

# After the daemon restarted mid-request, how long to wait for it to serve again (a
# model load) before asking once more.
RESTART_WAIT_S = 120.0

T = TypeVar("T")


def restart_backoff(wait_s: float) -> Backoff:
    """Tries for a daemon that is (re)starting: quick at first, a second apart at most."""
    return Backoff(0.05, 1.0, deadline=time.monotonic() + wait_s)


# ---------------------------------------------------------------- the blocking face


def connect(
    socket: str | None = None,
    *,
    wait_s: float = 0.0,
    connect_timeout_s: float = 3.0,
    start_daemon: bool = False,
    progress: TextIO = sys.stderr,
) -> Client:
    """A client that has had its `welcome`. With `start_daemon`, when none answers at
    once one is started (its progress written to `progress`) unless waiting could not
    help (our keys refused, someone else's directory). Else, with `wait_s`, keeps trying
    that long for a daemon that is (re)starting. Raises DaemonUnavailable when neither
    works."""
    if not start_daemon:
        return _hello_until(socket, wait_s, connect_timeout_s)
    try:
        return _hello_until(socket, 0.0, connect_timeout_s)
    except (KeysRefused, UntrustedSocket):
        raise
    except DaemonUnavailable:
        autostart.start_daemon(socket, progress)
        return _hello_until(socket, 0.0, connect_timeout_s)


def _hello_until(socket: str | None, wait_s: float, connect_timeout_s: float) -> Client:
    backoff = restart_backoff(wait_s)
    client = Client(socket, connect_timeout_s=connect_timeout_s)
    try:
        while True:
            try:
                client.hello()
                return client
            except KeysRefused:
                raise
            except (DaemonUnavailable, DaemonRestarted):
                # One socket throughout: ZeroMQ reconnects it by itself once a daemon binds.
                pause = backoff.next_pause_in_time()
                if pause is None:
                    raise
            time.sleep(pause)
    except BaseException:
        client.close()
        raise


def probe(socket: str | None, timeout_s: float = 1.0) -> v1.Welcome | None:
    """The `welcome` of the daemon at `socket`, or None when none answers there."""
    try:
        with Client(socket, connect_timeout_s=timeout_s) as client:
            return client.hello()
    except (DaemonUnavailable, RequestFailed):
        return None


# ---------------------------------------------------------------- the asyncio face


async def connect_async(
    socket: str | None,
    *,
    backoff: Backoff,
    unavailable: Callable[[DaemonUnavailable | RequestFailed, float], None],
    start_progress: TextIO | None = None,
    connect_timeout_s: float = 3.0,
) -> tuple[AsyncClient, v1.Welcome]:
    """A client and its `welcome`, saying hello on a fresh socket until a daemon
    answers, pausing as `backoff` says; `unavailable(why, pause_s)` hears each failure.
    With `start_progress`, the first time none answers a daemon is started (from a
    thread: autostart blocks), its progress written there."""
    tried_start = start_progress is None
    while True:
        client = AsyncClient(socket, connect_timeout_s=connect_timeout_s)
        try:
            welcome = await client.hello()
        except (DaemonUnavailable, RequestFailed) as exc:
            await client.close()
            why: DaemonUnavailable | RequestFailed = exc
            if start_progress is not None and not tried_start and isinstance(exc, DaemonUnavailable):
                tried_start = True
                try:
                    await asyncio.to_thread(autostart.start_daemon, socket, start_progress)
                    continue
                except DaemonUnavailable as failed:
                    # The first line; the log's tail that follows it does not fit a status line.
                    why = DaemonUnavailable(f"could not start one: {str(failed).splitlines()[0]}")
            pause = backoff.next_pause()
            unavailable(why, pause)
            await asyncio.sleep(pause)  # the backoff itself, not a synchronisation
            continue
        except asyncio.CancelledError:
            await client.close()
            raise
        return client, welcome


async def hello_again(client: AsyncClient, wait_s: float) -> v1.Welcome | None:
    """Hello until a (re)started daemon answers on this same socket (ZeroMQ reconnects
    it by itself), backing off to a second; None after `wait_s`."""
    backoff = restart_backoff(wait_s)
    while True:
        try:
            return await client.hello()
        except (DaemonUnavailable, RequestFailed):
            pause = backoff.next_pause_in_time()
            if pause is None:
                return None
            await asyncio.sleep(pause)  # the backoff itself, not a synchronisation


def open_async(socket: str | None, *, connect_timeout_s: float = 3.0) -> AsyncClient:
    """A client not yet said hello to, for a user that lives longer than any one daemon
    (the web bridge): each of its requests says hello first (`status_now`), so a
    daemon started later is found, and a missing one is a quick failure, not a wait."""
    return AsyncClient(socket, connect_timeout_s=connect_timeout_s)


async def status_now(client: AsyncClient) -> v1.StatusReply:
    """The daemon's status, after a hello: a status request alone waits out its timeout
    where the hello fails at once (no socket file)."""
    await client.hello()
    return await client.status()


async def heartbeat(client: AsyncClient) -> str | None:
    """Ask the daemon for its status: None when it answers, else why it is gone. The
    daemon sends nothing while idle, so after a quiet spell only asking tells."""
    try:
        await client.status()
    except (DaemonUnavailable, RequestFailed, zmq.ZMQError) as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- retry once after a restart
#
# When the daemon restarts mid-request, the request is asked again once, after waiting
# up to RESTART_WAIT_S for the daemon to serve again, but only if nothing of its answer
# was shown yet: asking again then cannot repeat or garble the answer.


def retry_once(
    attempt: Callable[[float], T], shown: Callable[[], bool], announce: Callable[[DaemonRestarted], None]
) -> T:
    """`attempt(wait_s)` once with no wait; after a restart that showed nothing, once
    more with `wait_s=RESTART_WAIT_S` (how long to wait for the daemon to be back)."""
    try:
        return attempt(0.0)
    except DaemonRestarted as exc:
        if shown():
            raise
        announce(exc)
    return attempt(RESTART_WAIT_S)


async def retry_once_async(
    attempt: Callable[[], Awaitable[T]],
    shown: Callable[[], bool],
    announce: Callable[[DaemonRestarted], None],
    back: Callable[[float], Awaitable[bool]],
) -> T:
    """As `retry_once`, for an asyncio client that keeps its socket: `back(wait_s)`
    waits for the daemon to answer again and says whether it did."""
    try:
        return await attempt()
    except DaemonRestarted as exc:
        if shown():
            raise
        announce(exc)
        if not await back(RESTART_WAIT_S):
            raise
    return await attempt()
