"""An asyncio client of the daemon, for frontends that run an event loop (the TUI, the
web bridge). One DEALER socket carries any number of concurrent requests; a reader
task routes each frame to its request's queue.

Imports only pyzmq, msgspec and the protocol; the socket, its errors and the retry
policies are `axchat.connection`'s; the socket is `axchat.daemon_socket`'s, shared with the blocking client. Every wait has a
deadline, and a reader failure reaches every waiting request instead of vanishing. As
in the blocking client, a socket monitor tells when the connection drops: requests in
flight then fail with `DaemonRestarted` at once, since their answers will never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from axchat import endpoint as ep
from axchat.daemon_socket import (
    DaemonRestarted,
    DaemonUnavailable,
    KeysRefused,
    RequestFailed,
    UntrustedSocket,
    not_answering,
    open_daemon_socket,
    request_frames,
)
from axchat.protocol import v1

__all__ = [
    "AsyncClient",
    "DaemonRestarted",
    "DaemonUnavailable",
    "GenerateHandle",
    "KeysRefused",
    "RequestFailed",
    "UntrustedSocket",
]


# Frames the reader takes per wake before it polls again (and lets the monitor speak).
DRAIN_FRAMES = 256


class GenerateHandle:
    """One running generate: iterate it for `delta`s up to `done`/`error`; `cancel()`
    asks the daemon to stop it (the stream then ends with `done`, cancelled)."""

    def __init__(self, client: AsyncClient, request_id: str, queue: asyncio.Queue[v1.DaemonMessage | BaseException]):
        self.client = client
        self.request_id = request_id
        self._queue = queue
        self.finished = False

    async def cancel(self) -> None:
        if not self.finished:
            await self.client._send(self.request_id, v1.Cancel())

    def backlog(self) -> bool:
        """Whether an event has already arrived that `events()` has not yet given."""
        return not self._queue.empty()

    async def events(self, stall_timeout_s: float = 300.0) -> AsyncIterator[v1.DaemonMessage]:
        try:
            while True:
                try:
                    # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that lands
                    # as a frame arrives, and a stopped answer would stream on.
                    async with asyncio.timeout(stall_timeout_s):
                        item = await self._queue.get()
                except TimeoutError:
                    raise DaemonUnavailable(
                        f"the daemon at {ep.describe(self.client.endpoint)} sent nothing for {stall_timeout_s:g}s"
                    ) from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, v1.TERMINAL):
                    self.finished = True
                    return
        finally:
            self.client._forget(self.request_id)


class AsyncClient:
    def __init__(self, socket: str | None = None, *, connect_timeout_s: float = 3.0) -> None:
        self.endpoint = ep.client_endpoint(socket)
        self.connect_timeout_s = connect_timeout_s
        self._ctx = zmq.asyncio.Context()
        self._link = open_daemon_socket(self._ctx, self.endpoint, name="aclient", keys_refused_raises=False)
        self._sock, self._monitor = self._link.sock, self._link.monitor
        # Set when a tcp:// daemon refuses our keys (ZeroMQ will not retry) or our key
        # files are unusable: every request then fails at once with the cause, so a
        # frontend handles it where it handles any unavailable daemon.
        self._refused: str | None = self._link.keys_refused
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = 0
        self._waiting: dict[str, asyncio.Queue[v1.DaemonMessage | BaseException]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_sent = time.monotonic()
        self._max_frame: int | None = None  # the daemon's, from `welcome`

    async def close(self) -> None:
        tasks = [t for t in (self._reader, self._heartbeat) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._link.close()
        self._ctx.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ requests

    async def hello(self) -> v1.Welcome:
        self._link.check_reachable()
        reply = await self._call(v1.Hello(client=f"axchat-async/{os.getpid()}"))
        assert isinstance(reply, v1.Welcome)
        self._max_frame = reply.max_frame_bytes
        if reply.client_timeout_s > 0 and self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._keep_alive(reply.client_timeout_s / 3), name="axchat-heartbeat")
        return reply

    async def status(self) -> v1.StatusReply:
        reply = await self._call(v1.Status())
        assert isinstance(reply, v1.StatusReply)
        return reply

    async def generate(self, request: v1.Generate) -> GenerateHandle:
        """Raises RequestFailed (`frame_too_large`) without sending when the request is
        over the daemon's frame limit: the connection stays up for every other request."""
        rid, queue = self._open()
        try:
            await self._send(rid, request)
        except BaseException:
            self._forget(rid)
            raise
        return GenerateHandle(self, rid, queue)

    # ------------------------------------------------------------ plumbing

    def _open(self) -> tuple[str, asyncio.Queue[v1.DaemonMessage | BaseException]]:
        self._counter += 1
        rid = f"{self._prefix}-{self._counter}"
        queue: asyncio.Queue[v1.DaemonMessage | BaseException] = asyncio.Queue()
        if self._refused is not None:
            queue.put_nowait(KeysRefused(self._refused))
        self._waiting[rid] = queue
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="axchat-client-reader")
        return rid, queue

    def _forget(self, rid: str) -> None:
        self._waiting.pop(rid, None)

    async def _send(self, rid: str, body: v1.ClientMessage) -> None:
        self._link.check_trusted()
        if self._link.keys_refused is not None:
            return  # never connected, as our keys are unusable: the request's queue holds why
        await self._sock.send_multipart(request_frames(rid, body, self._max_frame))
        self._last_sent = time.monotonic()

    async def _keep_alive(self, every_s: float) -> None:
        """While requests are live, make sure the daemon hears from us every `every_s`:
        it hears only what we send, never what we read."""
        while True:
            await asyncio.sleep(every_s)  # a period, not a synchronisation
            if self._waiting and time.monotonic() - self._last_sent >= every_s:
                self._counter += 1
                await self._send(f"{self._prefix}-ping-{self._counter}", v1.Ping())

    async def _call(self, body: v1.ClientMessage) -> v1.DaemonMessage:
        rid, queue = self._open()
        try:
            await self._send(rid, body)
            try:
                async with asyncio.timeout(self.connect_timeout_s):  # see events()
                    item = await queue.get()
            except TimeoutError:
                raise not_answering(self.endpoint, self.connect_timeout_s) from None
        finally:
            self._forget(rid)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, v1.Error):
            raise RequestFailed(item)
        return item

    async def _read(self) -> None:
        poller = zmq.asyncio.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        try:
            while await self._monitor.poll(0):
                # A drop before any request now in flight; a refusal still counts.
                self._note_refusal(parse_monitor_message(await self._monitor.recv_multipart()))
            while True:
                ready = dict(await poller.poll())
                if self._sock not in ready:
                    # Frames already received still count; a drop matters once none is left.
                    event = parse_monitor_message(await self._monitor.recv_multipart())
                    if self._note_refusal(event):
                        continue
                    if event["event"] == zmq.EVENT_DISCONNECTED:
                        self._dropped()
                    continue
                # Every frame already here, without a poll each: several streams' deltas
                # usually arrive together, and a poll costs more than the frame.
                for _ in range(DRAIN_FRAMES):
                    try:
                        env_raw, body_raw = await self._sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._route(env_raw, body_raw)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # forward, never swallow: waiters must not hang
            for queue in self._waiting.values():
                queue.put_nowait(exc)
            raise

    def _route(self, env_raw: bytes, body_raw: bytes) -> None:
        env = v1.decode_envelope(env_raw)
        try:
            body = v1.decode_daemon_body(body_raw)
        except msgspec.ValidationError:
            return  # a message type from a newer minor version
        if env.id == "" and isinstance(body, v1.Error):
            # Not tied to a request: every waiter hears it.
            for queue in self._waiting.values():
                queue.put_nowait(RequestFailed(body))
            return
        waiter = self._waiting.get(env.id)
        if waiter is not None:
            waiter.put_nowait(body)

    def _note_refusal(self, event: Mapping[str, Any]) -> bool:
        """A refused handshake fails every waiter now: no answer will ever come."""
        if self._refused is not None:
            return True  # the first cause stands; the drop that follows a refusal is no restart
        why = self._link.refusal(event)
        if why is None:
            return False
        self._refused = why
        for queue in self._waiting.values():
            queue.put_nowait(KeysRefused(why))
        return True

    def _dropped(self) -> None:
        """The connection went down: nothing in flight will be answered. ZeroMQ
        reconnects the socket by itself, so later requests may find a daemon again."""
        for rid in list(self._waiting):
            self._waiting.pop(rid).put_nowait(DaemonRestarted(self.endpoint))


@contextlib.asynccontextmanager
async def connect(socket: str | None = None, *, connect_timeout_s: float = 3.0) -> AsyncIterator[AsyncClient]:
    """A client that has said hello (so the daemon is known to be there)."""
    client = AsyncClient(socket, connect_timeout_s=connect_timeout_s)
    try:
        await client.hello()
        yield client
    finally:
        await client.close()
