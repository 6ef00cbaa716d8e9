"""The actor base on real inproc ZeroMQ sockets: order, close sentinel, failure hook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
import zmq.asyncio
from bus_teardown import assert_context_terminates

from axchat.actors import messages as m
from axchat.actors.mailbox import Actor, ActorState, Bus, send_close


class Recorder:
    def __init__(self) -> None:
        self.failures: list[tuple[str, m.ActorMessage, BaseException]] = []
        self.failed = asyncio.Event()

    def on_handler_error(self, actor: Actor, msg: m.ActorMessage, exc: BaseException) -> None:
        self.failures.append((actor.name, msg, exc))
        self.failed.set()


class Echo(Actor):
    """Collects the rids it sees; fails on rid 13."""

    name = "echo"

    def __init__(self, bus: Bus, sup: Recorder) -> None:
        super().__init__(bus, sup)
        self.seen: list[int] = []
        self.closed_hook_ran = False
        self.got = asyncio.Event()

    async def handle(self, msg: m.ActorMessage) -> None:
        assert isinstance(msg, m.ForgetSequence)
        if msg.rid == 13:
            raise ValueError("unlucky")
        self.seen.append(msg.rid)
        self.got.set()

    async def on_close(self) -> None:
        self.closed_hook_ran = True


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    ctx = zmq.asyncio.Context()
    yield Bus(ctx, "test")
    # Every socket must be closed by its owner by now.
    assert_context_terminates(ctx)


class Sender(Actor):
    name = "sender"

    async def handle(self, msg: m.ActorMessage) -> None:
        raise AssertionError("sender gets no mail")


async def test_messages_arrive_in_order_and_close_is_clean(bus: Bus) -> None:
    sup = Recorder()
    echo, sender = Echo(bus, sup), Sender(bus, sup)
    task = asyncio.create_task(echo.run())
    try:
        for rid in range(100, 150):
            await sender.send("echo", m.ForgetSequence(rid=rid))
        await send_close(bus, "echo")
        await asyncio.wait_for(task, 5)
    finally:
        sender._close_sockets()
    assert echo.seen == list(range(100, 150))
    assert echo.state is ActorState.CLOSED and echo.closed_hook_ran


async def test_handler_error_goes_to_supervisor_and_actor_carries_on(bus: Bus) -> None:
    sup = Recorder()
    echo, sender = Echo(bus, sup), Sender(bus, sup)
    task = asyncio.create_task(echo.run())
    try:
        await sender.send("echo", m.ForgetSequence(rid=13))
        await sender.send("echo", m.ForgetSequence(rid=14))
        await asyncio.wait_for(sup.failed.wait(), 5)
        await asyncio.wait_for(echo.got.wait(), 5)
        await send_close(bus, "echo")
        await asyncio.wait_for(task, 5)
    finally:
        sender._close_sockets()
    assert [(name, msg.rid) for name, msg, _ in sup.failures] == [("echo", 13)]  # type: ignore[attr-defined]
    assert isinstance(sup.failures[0][2], ValueError)
    assert echo.seen == [14]


async def test_cancelling_an_actor_runs_its_cleanup_and_propagates(bus: Bus) -> None:
    sup = Recorder()
    echo = Echo(bus, sup)
    task = asyncio.create_task(echo.run())
    await asyncio.sleep(0)  # let it reach its first recv; not a synchronisation on time
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert echo.closed_hook_ran and echo.state is ActorState.CLOSED


async def test_bad_internal_frame_is_not_silently_dropped(bus: Bus) -> None:
    """An undecodable internal frame is a bug: the actor's task fails loudly."""
    sup = Recorder()
    echo = Echo(bus, sup)
    task = asyncio.create_task(echo.run())
    push = bus.ctx.socket(zmq.PUSH)
    push.connect(bus.endpoint("echo"))
    await push.send(b"\xc1")
    push.close(linger=0)
    with pytest.raises(msgspec.DecodeError):
        await asyncio.wait_for(task, 5)
    assert echo.state is ActorState.CLOSED


class TaskRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.task_failures: list[tuple[str, str, BaseException]] = []
        self.task_failed = asyncio.Event()

    def on_task_error(self, actor: Actor, task_name: str, exc: BaseException) -> None:
        self.task_failures.append((actor.name, task_name, exc))
        self.task_failed.set()


class WithReader(Actor):
    """Owns a background task that fails, returns, or waits until cancelled."""

    name = "with-reader"

    def __init__(self, bus: Bus, sup: Recorder, ending: str) -> None:
        super().__init__(bus, sup)
        self.ending = ending
        self.gate = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self.reader = self.run_in_background(self._read(), "reader")

    async def _read(self) -> None:
        await self.gate.wait()
        if self.ending == "fails":
            raise OSError("socket gone")

    async def on_close(self) -> None:
        assert self.reader is not None
        self.reader.cancel()
        await asyncio.wait([self.reader])

    async def handle(self, msg: m.ActorMessage) -> None:
        pass


@pytest.mark.parametrize("ending", ["fails", "returns"])
async def test_a_background_task_that_ends_is_reported_not_silent(bus: Bus, ending: str) -> None:
    sup = TaskRecorder()
    actor = WithReader(bus, sup, ending)
    task = asyncio.create_task(actor.run())
    try:
        while actor.reader is None:  # on_start runs at the task's first step
            await asyncio.sleep(0)
        actor.gate.set()
        await asyncio.wait_for(sup.task_failed.wait(), 5)
    finally:
        await send_close(bus, actor.name)
        await asyncio.wait_for(task, 5)
    [(name, task_name, exc)] = sup.task_failures
    assert (name, task_name) == ("with-reader", "reader")
    assert isinstance(exc, OSError if ending == "fails" else RuntimeError)


async def test_a_background_task_cancelled_at_close_is_not_a_failure(bus: Bus) -> None:
    sup = TaskRecorder()
    actor = WithReader(bus, sup, "waits")
    task = asyncio.create_task(actor.run())
    while actor.reader is None:
        await asyncio.sleep(0)
    await send_close(bus, actor.name)
    await asyncio.wait_for(task, 5)
    assert actor.reader.cancelled() and sup.task_failures == []
