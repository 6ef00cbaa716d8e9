"""Placer: in front of several device actors, in one daemon (`--devices`). It holds the
daemon's one waiting line (round-robin across clients, so fairness holds across devices,
not per device) and hands a request to a device only when that device has a free slot:
to the device holding the conversation's prefix when it has room, else to the least
loaded, a device holding the model before one that keep-alive unloaded (a reload takes
seconds). A device that fails is taken out of placement; the others keep serving.

It takes the bus name "device", so the tokenizer, front door and supervisor talk to it
as they would to a lone device; the devices are "device-0", "device-1", ... With one
device there is no placer at all: the path is the one-device daemon's, unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass, field

import msgspec

from axchat.actors import messages as m
from axchat.actors.device.waiting_line import WaitingLine
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.prefix_affinity import PrefixAffinity, block_fingerprints
from axchat.actors.status import DeviceSection
from axchat.protocol.v1 import DeviceState, DeviceStatus, FinishReason, RequestInfo

log = logging.getLogger(__name__)

PLACER_NAME = "device"
# A device whose forward passes fail this many times running (no success between) is
# taken out: one failure may be the request's, several in a row are the device's.
FAILURES_TO_TAKE_OUT = 2
# A status reply waits this long for every device's report, then goes with those it has.
STATUS_WAIT_S = 1.0
RATE_WINDOW_S = 10.0


def device_name(index: int) -> str:
    return f"device-{index}"


@dataclass
class DeviceSpec:
    """What the placer knows of one device when the daemon starts."""

    name: str  # its bus name; "" for one that failed to load (it has no actor)
    label: str  # a card's name, cuda:1
    max_running: int = 0
    down_reason: str = ""  # set when it failed to load at start-up


@dataclass
class _Device:
    spec: DeviceSpec
    alive: bool
    reason: str = ""
    loaded: bool = True  # holds the model (each device says when keep-alive unloads it)
    running: dict[int, _Waiting] = field(default_factory=dict)  # placed on it, not ended
    last_placed_ns: int = 0
    failures_running: int = 0
    requests_total: int = 0
    affinity_hits: int = 0
    finished: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def has_room(self) -> bool:
        return self.alive and len(self.running) < self.spec.max_running

    def load(self) -> float:
        return len(self.running) / max(self.spec.max_running, 1)

    def rate(self, now: float) -> float:
        while self.finished and self.finished[0][0] < now - RATE_WINDOW_S:
            self.finished.popleft()
        return sum(n for _, n in self.finished) / RATE_WINDOW_S


@dataclass
class _Waiting:
    admit: m.Admit
    fingerprints: list[int]
    preferred: str | None  # the device holding its conversation's prefix
    admitted_ns: int = field(default_factory=time.monotonic_ns)
    queue_position: int = 0

    @property
    def rid(self) -> int:
        return self.admit.rid

    @property
    def client(self) -> str:
        return self.admit.client


@dataclass
class _StatusRound:
    query: m.StatusQuery
    waiting_for: set[str]
    reports: dict[str, DeviceSection] = field(default_factory=dict)  # each device's section
    timer: asyncio.TimerHandle | None = None


class PlacerActor(Actor):
    name = PLACER_NAME

    def __init__(self, bus: Bus, supervisor: Supervisor, devices: list[DeviceSpec]) -> None:
        super().__init__(bus, supervisor)
        self._devices = {
            spec.name or f"failed-{i}": _Device(spec, alive=not spec.down_reason, reason=spec.down_reason)
            for i, spec in enumerate(devices)
        }
        self._queue: WaitingLine[_Waiting] = WaitingLine(self._tell_position)
        self._placed: dict[int, str] = {}  # rid -> device name, until it ends
        self._affinity = PrefixAffinity()
        self._status_ids = itertools.count(1)  # the copies it asks its devices
        self._status_of: dict[int, tuple[int, str]] = {}  # query id -> (round rid, device)
        self._rounds: dict[int, _StatusRound] = {}

    # ------------------------------------------------------------ mailbox

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.Admit):
            fingerprints = block_fingerprints(msg.prompt_ids)
            preferred = self._affinity.find(msg.client, fingerprints)
            msg.queued_since_ns = time.monotonic_ns()
            self._queue.push(_Waiting(msg, fingerprints, preferred, admitted_ns=msg.queued_since_ns))
            await self._place()
        elif isinstance(msg, m.Ended):
            await self._ended(msg)
        elif isinstance(msg, (m.CancelRequest, m.StopSequence)):
            await self._stop(msg)
        elif isinstance(msg, m.Sampled):
            # Samplers answer the device that sent the logits; one addressed to the
            # placer is forwarded rather than lost.
            where = self._placed.get(msg.rid)
            if where is not None:
                await self.send(where, msg)
        elif isinstance(msg, m.ForgetClient):
            self._affinity.forget_connection(msg.connection)
            for name in self._with_actor():
                await self.send(name, msg)
        elif isinstance(msg, m.StatusQuery):
            if msg.device is not None:  # a device's answer to the copy it was asked
                await self._device_report(msg)
            else:
                await self._status_query(msg)  # the front door's
        elif isinstance(msg, m.DeviceDown):
            await self._take_out(msg.name, msg.reason, fail_running=True)
        elif isinstance(msg, m.DeviceResidency):
            self._resident(msg)
        else:
            raise TypeError(f"placer got unexpected {type(msg).__name__}")

    def _with_actor(self) -> list[str]:
        return [name for name, d in self._devices.items() if d.spec.name]

    # ------------------------------------------------------------ placement

    async def _place(self) -> None:
        """Hand waiting requests to devices with room, in the line's fair order."""
        while self._queue:
            open_ = [d for d in self._devices.values() if d.has_room()]
            if not open_:
                break
            item, device = self._choose(open_)
            self._queue.leave(item.rid)
            device.running[item.rid] = item
            device.requests_total += 1
            device.last_placed_ns = time.monotonic_ns()
            if item.preferred == device.spec.name:
                device.affinity_hits += 1
            self._placed[item.rid] = device.spec.name
            await self.send(device.spec.name, self._for_device(item.admit))
        await self._queue.announce()

    def _for_device(self, admit: m.Admit) -> m.Admit:
        """A burst the tokenizer announces spreads over the devices: each hears of its
        share, so none waits (planner.gather_until) for prompts placed elsewhere."""
        if not admit.more_coming:
            return admit
        alive = sum(d.alive for d in self._devices.values())
        return msgspec.structs.replace(admit, more_coming=admit.more_coming // max(alive, 1))

    def _resident(self, msg: m.DeviceResidency) -> None:
        device = self._devices.get(msg.device)
        if device is None:
            return
        device.loaded = msg.loaded
        if not msg.loaded:  # its cached prefixes go with the model: no turn should wait for them
            self._affinity.forget_device(msg.device)

    def _choose(self, open_: list[_Device]) -> tuple[_Waiting, _Device]:
        # A device holding the model before one that must load it again, however busy:
        # a reload costs seconds, a shared batch milliseconds a token.
        least_loaded = min(open_, key=lambda d: (not d.loaded, d.load(), d.last_placed_ns))
        first: _Waiting | None = None
        for item in self._queue.in_order():
            first = first or item
            preferred = self._devices.get(item.preferred or "")
            if preferred is None or not preferred.alive or not preferred.loaded:
                # No prefix anywhere (an unloaded device's went with the model): it goes
                # where the model is and there is most room.
                return item, least_loaded
            if preferred.has_room():
                return item, preferred
            # Its prefix is on a full device: it waits for that one while others can go.
        # Everyone waiting has a prefix on a full device: rather than leave a device idle,
        # the longest-waiting client's request goes here and pays for its prompt again.
        assert first is not None
        return first, least_loaded

    async def _tell_position(self, rid: int, position: int) -> None:
        await self.send("tokenizer", m.QueuePosition(rid=rid, position=position))

    async def _ended(self, msg: m.Ended) -> None:
        name = self._placed.pop(msg.rid, None)
        device = self._devices.get(name or "")
        if device is None:
            return
        item = device.running.pop(msg.rid, None)
        device.finished.append((time.monotonic(), msg.completion_tokens))
        if msg.error is None:
            device.failures_running = 0
            if item is not None and msg.reason != "error":
                self._affinity.record(item.client, item.fingerprints, device.spec.name)
        elif msg.error.code == "load_failed":
            await self._take_out(device.spec.name, f"loading the model failed: {msg.error.message}")
        elif msg.error.code == "internal":  # the protocol's code for a device failure: a forward pass failed
            device.failures_running += 1
            if device.failures_running >= FAILURES_TO_TAKE_OUT:
                await self._take_out(device.spec.name, f"{device.failures_running} forward passes failed in a row")
        await self._place()

    async def _take_out(self, name: str, reason: str, *, fail_running: bool = False) -> None:
        device = self._devices.get(name)
        if device is None or not device.alive:
            return
        if sum(d.alive for d in self._devices.values()) == 1:
            if fail_running:  # its actor is gone: nothing is left to serve
                raise RuntimeError(f"the last device, {name} ({device.spec.label}), stopped: {reason}")
            log.error("%s (%s) failing: %s; it is the last device, so it stays in placement", name, device.spec.label, reason)
            return
        device.alive, device.reason = False, reason
        self._affinity.forget_device(name)
        log.error("%s (%s) taken out of placement: %s; the other devices keep serving", name, device.spec.label, reason)
        if fail_running:
            error = m.Failure(code="internal", message=f"{name} ({device.spec.label}) stopped: {reason}")
            for rid, item in list(device.running.items()):
                self._placed.pop(rid, None)
                await self._end_here(item, "error", error)
            device.running.clear()
        await self._place()

    async def _stop(self, msg: m.CancelRequest | m.StopSequence) -> None:
        reason: FinishReason = msg.reason if isinstance(msg, m.CancelRequest) else "stop"
        if await self._queue.stop(msg.rid, lambda item: self._end_here(item, reason)):
            return
        where = self._placed.get(msg.rid)
        if where is not None:
            await self.send(where, msg)

    async def _end_here(self, item: _Waiting, reason: FinishReason, error: m.Failure | None = None) -> None:
        """End a request no device holds (it waited here, or its device died)."""
        await self.send("sampler", m.ForgetSequence(rid=item.rid))
        queue_ms = (time.monotonic_ns() - item.admitted_ns) / 1e6
        await self.send(
            "tokenizer",
            m.Ended(
                rid=item.rid,
                reason=reason,
                prompt_tokens=len(item.admit.prompt_ids),
                completion_tokens=0,
                cached_tokens=0,
                timings=m.DeviceTimings(queue_ms=queue_ms),
                error=error,
                device="",
            ),
        )

    # ------------------------------------------------------------ status

    async def _status_query(self, query: m.StatusQuery) -> None:
        """Each live device fills in a copy of the reply; `_answer` sums them."""
        asking = [d.spec.name for d in self._devices.values() if d.spec.name and d.alive]
        round_ = _StatusRound(query, set(asking))
        self._rounds[query.rid] = round_
        for name in asking:
            qid = next(self._status_ids)
            self._status_of[qid] = (query.rid, name)
            await self.send(name, msgspec.structs.replace(query, rid=qid))
        if not asking:
            await self._answer(query.rid)
            return
        loop = asyncio.get_running_loop()
        round_.timer = loop.call_later(STATUS_WAIT_S, lambda: loop.create_task(self._answer(query.rid)))

    async def _device_report(self, filled: m.StatusQuery) -> None:
        rid, name = self._status_of.pop(filled.rid, (None, ""))
        round_ = self._rounds.get(rid) if rid is not None else None
        if round_ is None:
            return  # came after the reply went
        assert filled.device is not None
        round_.reports[name] = filled.device
        round_.waiting_for.discard(name)
        if not round_.waiting_for:
            await self._answer(round_.query.rid)

    async def _answer(self, rid: int) -> None:
        round_ = self._rounds.pop(rid, None)
        if round_ is None:
            return
        if round_.timer is not None:
            round_.timer.cancel()
        for qid in [q for q, (r, _) in self._status_of.items() if r == rid]:
            del self._status_of[qid]
        # On to the reply stage, as a lone device would send it.
        await self.send("reply", msgspec.structs.replace(round_.query, device=self._aggregate(round_)))

    def _aggregate(self, round_: _StatusRound) -> DeviceSection:
        """The devices' sections summed, and a line for each."""
        reports = list(round_.reports.values())
        now = time.monotonic()
        statuses = []
        state: DeviceState
        for name, device in self._devices.items():
            report = round_.reports.get(name)
            state, reason = "down", device.reason
            if device.alive and report is not None:
                state = "loading" if report.load_stage else "serving" if report.loaded else "unloaded"
            elif device.alive:  # its loop is busy or wedged: still placed on, but say so
                state, reason = "serving", f"did not answer the status query in {STATUS_WAIT_S:g}s"
            statuses.append(
                DeviceStatus(
                    name=device.spec.name or name,
                    label=device.spec.label,
                    state=state,
                    running=report.running if report is not None else 0,
                    queued=report.queued if report is not None else 0,
                    max_running=device.spec.max_running if device.alive else 0,
                    tokens_per_s=device.rate(now),
                    requests_total=device.requests_total,
                    affinity_hits=device.affinity_hits,
                    reason=reason,
                )
            )
        waiting = [self._waiting_info(item) for item in self._queue.in_order()]
        unloads = [r.unloads_at for r in reports if r.unloads_at is not None]
        steps = [r.step_ms for r in reports if r.step_ms]
        overheads = [r.overhead_ms_per_token for r in reports if r.overhead_ms_per_token]
        return DeviceSection(
            running=sum(r.running for r in reports),
            queued=sum(r.queued for r in reports) + len(waiting),
            kv_sequences=sum(r.kv_sequences for r in reports),
            requests=[req for r in reports for req in r.requests] + waiting,
            max_running=sum(d.spec.max_running for d in self._devices.values() if d.alive),
            prefix_cache_entries=sum(r.prefix_cache_entries for r in reports),
            prefix_cache_bytes=sum(r.prefix_cache_bytes for r in reports),
            loaded=any(r.loaded for r in reports),
            unloads_at=min(unloads) if unloads else None,
            load_stage=next((r.load_stage for r in reports if r.load_stage), None),
            step_ms=sum(steps) / len(steps) if steps else 0.0,
            overhead_ms_per_token=sum(overheads) / len(overheads) if overheads else 0.0,
            devices=statuses,
        )

    @staticmethod
    def _waiting_info(item: _Waiting) -> RequestInfo:
        return RequestInfo(
            id=item.admit.label,
            state="queued",
            prompt_tokens=len(item.admit.prompt_ids),
            prefilled_tokens=0,
            completion_tokens=0,
            max_tokens=item.admit.sampling.max_tokens,
            queue_position=item.queue_position,
        )

    async def on_close(self) -> None:
        for round_ in self._rounds.values():
            if round_.timer is not None:
                round_.timer.cancel()
