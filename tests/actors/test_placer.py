"""The placer on real inproc ZeroMQ sockets, between stand-in device actors that record
what they are given and end requests when the test says: placement only into free slots,
affinity with stealing when the prefix's device stays full, a device holding the model
preferred to one keep-alive unloaded, a device actor that dies failing only what it
held, cancels reaching the right device, and status waiting for every device's report
(and going without one that never answers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
import zmq.asyncio
from bus_teardown import assert_context_terminates

from axchat.actors import messages as m
from axchat.actors.mailbox import Actor, Bus, send_close
from axchat.actors.placer import PlacerActor
from axchat.actors.prefix_affinity import BLOCK_TOKENS
from axchat.actors.status import DeviceSection
from axchat.protocol import v1
from axchat.protocol.v1 import DaemonState, Sampling

DEADLINE_S = 5.0


class Supervision:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_handler_error(self, actor: Actor, msg: m.ActorMessage, exc: BaseException) -> None:
        self.errors.append(exc)

    def on_task_error(self, actor: Actor, task_name: str, exc: BaseException) -> None:
        self.errors.append(exc)


class Inbox(Actor):
    """Collects every message under its name (a stand-in device, tokenizer, sampler,
    reply stage); a device stand-in fills in its copy of a status reply unless told to stay silent."""

    def __init__(self, bus: Bus, sup: Supervision, name: str, *, answers_status: bool = True) -> None:
        self.name = name
        super().__init__(bus, sup)
        self.got: asyncio.Queue[m.ActorMessage] = asyncio.Queue()
        self.answers_status = answers_status

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.StatusQuery) and self.answers_status and self.name.startswith("device-"):
            filled = msgspec.structs.replace(msg, device=DeviceSection(running=1, kv_sequences=1))
            await self.send("device", filled)
        self.got.put_nowait(msg)

    async def next(self, kind: type) -> m.ActorMessage:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                msg = await self.got.get()
                if isinstance(msg, kind):
                    return msg


@pytest.fixture
async def rig() -> AsyncIterator[tuple[Actor, dict[str, Inbox], Supervision]]:
    ctx = zmq.asyncio.Context()
    bus = Bus(ctx, "placer-test")
    sup = Supervision()
    from axchat.actors.placer import DeviceSpec

    inboxes = {
        name: Inbox(bus, sup, name)
        for name in ("device-0", "device-1", "device-2", "tokenizer", "sampler", "reply")
    }
    specs = [DeviceSpec(f"device-{i}", f"card {i}", max_running=1) for i in range(3)]
    specs.append(DeviceSpec("", "card 3", down_reason="in use"))
    placer = PlacerActor(bus, sup, specs)
    tasks = [asyncio.create_task(a.run()) for a in [*inboxes.values(), placer]]
    driver = Inbox(bus, sup, "driver")  # sends as the tokenizer and the devices would
    try:
        yield driver, inboxes, sup
    finally:
        for name in [*inboxes, "device"]:
            await send_close(bus, name)
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
        driver.discard()
        assert_context_terminates(ctx)


def admit(rid: int, client: str, prompt: list[int]) -> m.Admit:
    return m.Admit(rid=rid, label=f"r{rid}", client=client, prompt_ids=prompt, sampling=Sampling(max_tokens=4), eos_ids=[])


def ended(rid: int, device: str, reason: str = "length") -> m.Ended:
    return m.Ended(
        rid=rid, reason=reason, prompt_tokens=1, completion_tokens=4, cached_tokens=0,  # type: ignore[arg-type]
        timings=m.DeviceTimings(), device=device,
    )  # fmt: skip


async def test_placement_affinity_stealing_death_and_status(rig: tuple[Actor, dict[str, Inbox], Supervision]) -> None:
    driver, box, sup = rig
    conversation = list(range(2 * BLOCK_TOKENS))
    # One request per free slot; the fourth waits in the placer's line.
    for rid, client in ((1, "alice"), (2, "bob"), (3, "carol"), (4, "dave")):
        await driver.send("device", admit(rid, client, conversation if client == "alice" else [rid] * 20))
    placed = {name: (await box[name].next(m.Admit)).rid for name in ("device-0", "device-1", "device-2")}
    assert sorted(placed.values()) == [1, 2, 3]
    alice_on = next(name for name, rid in placed.items() if rid == 1)
    assert isinstance(await box["tokenizer"].next(m.QueuePosition), m.QueuePosition)  # dave hears he waits

    # Alice's turn ends: dave goes where room opened; alice's next turn waits for her card.
    await driver.send("device", ended(1, alice_on))
    assert (await box[alice_on].next(m.Admit)).rid == 4
    await driver.send("device", admit(5, "alice", [*conversation, 1, 2, 3]))
    other = next(name for name in placed if name != alice_on)
    await driver.send("device", ended(placed[other], other))
    # Every waiting request's card is full (alice's): rather than idle, `other` takes it.
    assert (await box[other].next(m.Admit)).rid == 5

    # A cancel reaches the device holding the request.
    await driver.send("device", m.CancelRequest(rid=5))
    assert (await box[other].next(m.CancelRequest)).rid == 5

    # The third card's actor dies: what it held fails, nothing more goes there.
    third = next(name for name in placed if name not in (alice_on, other))
    await driver.send("device", m.DeviceDown(name=third, reason="lost its task device-steps"))
    failed = await box["tokenizer"].next(m.Ended)
    assert failed.rid == placed[third] and failed.reason == "error" and failed.error is not None  # type: ignore[union-attr]
    assert third in failed.error.message  # type: ignore[union-attr]

    # Status: the reports of the live devices, the dead and the never-loaded listed.
    await driver.send("device", m.StatusQuery(rid=99, state=DaemonState.SERVING))
    answered = await box["reply"].next(m.StatusQuery)
    assert answered.rid == 99  # type: ignore[union-attr]
    report = answered.device  # type: ignore[union-attr]
    states = {d.label: (d.state, d.reason) for d in report.devices}  # type: ignore[union-attr]

    def label(name: str) -> str:
        return name.replace("device-", "card ")

    assert states == {
        label(alice_on): ("serving", ""),
        label(other): ("serving", ""),
        label(third): ("down", "lost its task device-steps"),
        "card 3": ("down", "in use"),
    }
    assert report.max_running == 2 and report.running == 2 and report.kv_sequences == 2
    assert not sup.errors


async def test_status_goes_without_a_device_that_never_answers(rig: tuple[Actor, dict[str, Inbox], Supervision]) -> None:
    driver, box, _ = rig
    box["device-2"].answers_status = False
    await driver.send("device", m.StatusQuery(rid=7, state=DaemonState.SERVING))
    answered = await box["reply"].next(m.StatusQuery)  # device-2 is silent: the wait is bounded
    report = answered.device  # type: ignore[union-attr]
    assert answered.rid == 7 and report.running == 2 and answered.state is DaemonState.SERVING  # type: ignore[union-attr]
    silent = next(d for d in report.devices if d.name == "device-2")
    assert silent.state == "serving" and "did not answer" in silent.reason


async def test_group_supervisor_turns_a_dead_device_actor_into_device_down() -> None:
    from axchat.daemon.device_group import GroupSupervisor

    ctx = zmq.asyncio.Context()
    bus = Bus(ctx, "group-supervisor-test")
    sup = GroupSupervisor(bus)
    sup.devices = {"device-1"}
    placer_inbox = Inbox(bus, Supervision(), "device")
    dead = Inbox(bus, Supervision(), "device-1")
    other = Inbox(bus, Supervision(), "reply")
    task = asyncio.create_task(placer_inbox.run())
    try:
        sup.on_task_error(dead, "device-steps", RuntimeError("card gone"))
        down = await placer_inbox.next(m.DeviceDown)
        assert down.name == "device-1" and "card gone" in down.reason  # type: ignore[union-attr]
        assert not sup.fatal.done()  # the daemon goes on with the other devices
        sup.on_task_error(other, "reader", RuntimeError("not a device"))
        assert sup.fatal.done()  # anything else is still fatal
    finally:
        await send_close(bus, "device")
        await asyncio.wait_for(task, DEADLINE_S)
        sup.close()
        for actor in (dead, other):
            actor.discard()
        assert_context_terminates(ctx)


async def test_the_sampler_answers_the_device_that_sent_the_logits() -> None:
    import numpy as np

    from axchat.actors.sampler import SamplerActor

    ctx = zmq.asyncio.Context()
    bus = Bus(ctx, "sampler-reply-test")
    sup = Supervision()
    sampler = SamplerActor(bus, sup)
    card = Inbox(bus, sup, "device-1")
    placer = Inbox(bus, sup, "device")
    tasks = [asyncio.create_task(a.run()) for a in (sampler, card, placer)]
    try:
        row = np.zeros(8, dtype=np.float32)
        row[3] = 10.0
        sampling = Sampling(temperature=0.5, seed=1)
        await card.send("sampler", m.Logits(rid=1, data=row.tobytes(), sampling=sampling, context_ids=[1], reply_to="device-1"))
        await card.send("sampler", m.Logits(rid=1, data=row.tobytes()))  # later rows carry no address
        for _ in range(2):
            assert (await card.next(m.Sampled)).token_id == 3  # type: ignore[union-attr]
        assert placer.got.empty()
    finally:
        for name in ("sampler", "device-1", "device"):
            await send_close(bus, name)
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
        assert_context_terminates(ctx)


async def test_a_burst_announced_to_the_placer_is_shared_out(rig: tuple[Actor, dict[str, Inbox], Supervision]) -> None:
    """Each device hears of its share of the prompts still being encoded, so none waits
    for prompts that will be placed on another (three live devices here)."""
    driver, box, _ = rig
    await driver.send("device", msgspec.structs.replace(admit(1, "alice", [1] * 20), more_coming=6))
    placed = await box["device-0"].next(m.Admit)
    assert placed.rid == 1 and placed.more_coming == 2  # type: ignore[union-attr]


async def test_a_device_holding_the_model_is_preferred_to_one_keep_alive_unloaded(
    rig: tuple[Actor, dict[str, Inbox], Supervision],
) -> None:
    """Devices say when keep-alive unloads them and when they are loaded again: a request
    goes where the model is while there is room there (a reload takes seconds), and a
    conversation whose device unloaded (its cache went with the model) goes there too."""
    driver, box, sup = rig
    for name in ("device-0", "device-1"):
        await driver.send("device", m.DeviceResidency(device=name, loaded=False))
    conversation = list(range(2 * BLOCK_TOKENS))
    await driver.send("device", admit(1, "alice", conversation))
    assert (await box["device-2"].next(m.Admit)).rid == 1  # the one still holding the model
    await driver.send("device", admit(2, "bob", [2] * 20))
    # The loaded device is full: rather than wait, bob's request loads the model again.
    assert (await box["device-0"].next(m.Admit)).rid == 2
    await driver.send("device", m.DeviceResidency(device="device-0", loaded=True))
    await driver.send("device", ended(2, "device-0"))
    await driver.send("device", ended(1, "device-2"))  # alice's prefix is on device-2...
    await driver.send("device", m.DeviceResidency(device="device-2", loaded=False))  # ...until it unloads
    await driver.send("device", admit(3, "alice", [*conversation, 1, 2, 3]))
    assert (await box["device-0"].next(m.Admit)).rid == 3  # loaded, with room: no reload for her turn
    await driver.send("device", admit(4, "carol", [4] * 20))
    assert (await box["device-1"].next(m.Admit)).rid == 4  # every loaded device full: the first unloaded
    assert not sup.errors


async def test_a_device_failing_forward_passes_is_taken_out_by_the_errors_code(
    rig: tuple[Actor, dict[str, Inbox], Supervision],
) -> None:
    """The placer knows a failed forward pass by the code the device ends the request
    with (`internal`, the protocol's code for a device failure), whatever the sentence says."""
    driver, box, sup = rig
    for rid in (1, 2, 3):
        await driver.send("device", admit(rid, f"client{rid}", [rid] * 20))
    placed = {name: (await box[name].next(m.Admit)).rid for name in ("device-0", "device-1", "device-2")}  # type: ignore[union-attr]

    def failed(rid: int, device: str, code: v1.ErrorCode) -> m.Ended:
        error = m.Failure(code=code, message="the card went away")  # no "device error" in the text
        return msgspec.structs.replace(ended(rid, device, "error"), error=error)

    await driver.send("device", failed(placed["device-0"], "device-0", "internal"))
    await driver.send("device", admit(4, "client4", [4] * 20))
    assert (await box["device-0"].next(m.Admit)).rid == 4  # type: ignore[union-attr]  # one failure may be the request's
    await driver.send("device", failed(4, "device-0", "internal"))  # two in a row are the device's
    await driver.send("device", admit(5, "client5", [5] * 20))
    await driver.send("device", m.StatusQuery(rid=99, state=DaemonState.SERVING))
    report = (await box["reply"].next(m.StatusQuery)).device  # type: ignore[union-attr]
    states = {d.name: (d.state, d.reason) for d in report.devices}  # type: ignore[union-attr]
    assert states["device-0"] == ("down", "2 forward passes failed in a row")
    assert states["device-1"] == states["device-2"] == ("serving", "")
    assert box["device-0"].got.empty()  # neither request 5 (it waits for a live device) nor the status query
    assert not sup.errors
