"""The actor base: one inproc ZeroMQ inbox read in order, a close sentinel, and one
supervisor hook that hears about every handler failure, and one for the actor's own
long-lived tasks."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

import zmq
import zmq.asyncio

from axchat.actors import messages as m
from axchat.zmq_sockets import make_socket

log = logging.getLogger(__name__)


class ActorState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    CLOSING = "closing"  # got Close: no more reads, cleanup under way
    CLOSED = "closed"


class Supervisor(Protocol):
    def on_handler_error(self, actor: Actor, msg: m.ActorMessage, exc: BaseException) -> None: ...

    def on_task_error(self, actor: Actor, task_name: str, exc: BaseException) -> None:
        """An actor's own long-lived task (a reader, a step loop) failed or stopped."""
        ...


class Bus:
    """Names -> inproc endpoints. Each actor binds its own inbox and keeps one PUSH
    socket per peer it talks to; moving an actor out of process means changing the
    endpoint scheme here, nothing else."""

    def __init__(self, ctx: zmq.asyncio.Context, namespace: str) -> None:
        self.ctx = ctx
        self.namespace = namespace

    def endpoint(self, name: str) -> str:
        return f"inproc://{self.namespace}/{name}"


class Outboxes:
    """One PUSH socket per peer, made on first use; whoever sends to actors owns one.

    A message goes straight into the pipe when it has room (always, but for a peer
    that is gone: the pipes are unbounded) through a plain socket sharing the async
    one's handle, without pyzmq's asyncio future bookkeeping: about 1 us against 16 a
    send and receive, on every token of every stream on the loop the engine shares
    the CPU with. Only while an earlier send to that peer waits does a send wait
    behind it, so that messages to a peer keep their order."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._socks: dict[str, zmq.asyncio.Socket] = {}
        self._now: dict[str, zmq.Socket[bytes]] = {}  # the same sockets, never waiting
        self._waiting: dict[str, int] = {}  # sends to each peer waiting for room

    async def send(self, to: str, msg: m.ActorMessage) -> None:
        sock = self._socks.get(to)
        if sock is None:
            sock = make_socket(self._bus.ctx, zmq.PUSH, connect=self._bus.endpoint(to))
            self._socks[to] = sock
            self._now[to] = zmq.Socket.shadow(sock.underlying)
            self._waiting[to] = 0
        data = m.encode(msg)
        if not self._waiting[to]:
            try:
                self._now[to].send(data, zmq.DONTWAIT, copy=False)
                return
            except zmq.Again:
                pass
        self._waiting[to] += 1
        try:
            await sock.send(data, copy=False)
        finally:
            self._waiting[to] -= 1

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close(linger=0)
        self._socks.clear()
        self._now.clear()


class Actor:
    """Subclasses set `name` and implement `handle`. `handle` must return quickly:
    blocking work goes to an executor or a task the actor owns."""

    name: str = "actor"

    def __init__(self, bus: Bus, supervisor: Supervisor) -> None:
        self.bus = bus
        self.supervisor = supervisor
        self.state = ActorState.CREATED
        self._inbox = make_socket(bus.ctx, zmq.PULL, bind=bus.endpoint(self.name))
        # The inbox read without waiting (Outboxes says why); the async socket waits
        # when it is empty, and checks for mail before it does, so none is missed.
        self._inbox_now: zmq.Socket[bytes] = zmq.Socket.shadow(self._inbox.underlying)
        self._outboxes = Outboxes(bus)

    async def run(self) -> None:
        self.state = ActorState.RUNNING
        try:
            await self.on_start()
            while self.state is ActorState.RUNNING:
                msg = m.decode(await self._receive())
                if isinstance(msg, m.Close):
                    break
                await self._handle_one(msg)
            # The sentinel came down its own pipe and may have overtaken mail that
            # had already arrived on others: finish that, then stop.
            self.state = ActorState.CLOSING
            while await self._inbox.poll(0):
                msg = m.decode(await self._inbox.recv(copy=True))
                if not isinstance(msg, m.Close):
                    await self._handle_one(msg)
        finally:
            self.state = ActorState.CLOSING
            try:
                await self.on_close()
            finally:
                self._close_sockets()
                self.state = ActorState.CLOSED

    async def _receive(self) -> bytes:
        try:
            return self._inbox_now.recv(zmq.DONTWAIT)
        except zmq.Again:
            return await self._inbox.recv(copy=True)

    async def _handle_one(self, msg: m.ActorMessage) -> None:
        try:
            await self.handle(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed message must not stop the actor
            self.supervisor.on_handler_error(self, msg, exc)

    async def handle(self, msg: m.ActorMessage) -> None:
        raise NotImplementedError

    async def on_start(self) -> None:
        """Hook: runs inside the actor's task before the first message."""

    async def on_close(self) -> None:
        """Hook: release what the actor owns. Runs even when the task is cancelled."""

    async def send(self, to: str, msg: m.ActorMessage) -> None:
        await self._outboxes.send(to, msg)

    def run_in_background(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task the actor owns for its whole life (a socket reader, a step loop). It
        must not end while the actor runs: if it fails, or returns, the supervisor hears
        it, rather than the daemon going on without it in silence. Cancelling it at
        close is not a failure."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.state is not ActorState.RUNNING:
            return
        exc = task.exception() or RuntimeError(f"{task.get_name()} stopped while {self.name} was running")
        self.supervisor.on_task_error(self, task.get_name(), exc)

    def discard(self) -> None:
        """Release an actor that will never run (start-up failed after it was made)."""
        self._close_sockets()
        self.state = ActorState.CLOSED

    def _close_sockets(self) -> None:
        self._outboxes.close()
        self._inbox.close(linger=0)


async def send_close(bus: Bus, name: str) -> None:
    """Put the close sentinel in an actor's inbox (from outside the actor)."""
    sock = make_socket(bus.ctx, zmq.PUSH, connect=bus.endpoint(name))
    # Give the sentinel time to land: with linger 0 a close could drop it.
    sock.setsockopt(zmq.LINGER, 1000)
    try:
        await sock.send(m.encode(m.Close()))
    finally:
        sock.close(linger=0)

