"""Device actor: owns the backend and every sequence's KV; schedules prefill chunks
and batched decode steps on one device thread while its mailbox keeps answering."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from axchat.actors import messages as m
from axchat.actors.backends.base import DeviceBackend
from axchat.actors.fair_queue import FairQueue
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.sampling import SequenceSampler
from axchat.protocol.v1 import ErrorInfo, FinishReason, RequestInfo, Sampling

log = logging.getLogger(__name__)


class SeqState(enum.Enum):
    WAITING = "waiting"  # admitted, in line for a slot
    PREFILL = "prefill"  # has a slot, prompt not all fed yet
    COMPUTING = "computing"  # in a forward pass on the device thread
    SAMPLING = "sampling"  # logits are with the sampler
    READY = "ready"  # next token known, waiting for a decode step


@dataclass
class _Sequence:
    rid: int
    label: str
    client: str
    prompt_ids: list[int]
    sampling: Sampling
    eos_ids: frozenset[int]
    state: SeqState = SeqState.WAITING
    prefilled: int = 0  # prompt tokens in the device's KV so far (cached ones included)
    cached_tokens: int = 0  # of those, restored from the prefix cache
    fed: list[int] = field(default_factory=list)  # generated tokens fed back by decode steps
    next_token: int = -1
    completion_tokens: int = 0
    queue_position: int = 0
    # Set when a cancel arrives during a forward pass: acted on when it returns.
    pending_end: FinishReason | None = None
    admitted_ns: int = field(default_factory=time.monotonic_ns)
    timings: m.DeviceTimings = field(default_factory=m.DeviceTimings)
    greedy: SequenceSampler | None = None  # set for greedy requests: sampled here, not by the sampler actor

    def info(self) -> RequestInfo:
        state: Literal["queued", "prefill", "decode"] = "decode"
        if self.state is SeqState.WAITING:
            state = "queued"
        elif self.prefilled < len(self.prompt_ids):
            state = "prefill"
        return RequestInfo(
            id=self.label,
            state=state,
            prompt_tokens=len(self.prompt_ids),
            prefilled_tokens=self.prefilled,
            completion_tokens=self.completion_tokens,
            max_tokens=self.sampling.max_tokens,
            queue_position=self.queue_position,
        )


def _ms(ns: int) -> float:
    return ns / 1e6


class DecodeClock:
    """The decode forward's time against the daemon's own time between two decode
    steps back to back (logits to the sampler, the sampled token back, the actors'
    hops): the latter is what the daemon adds to every token of every stream.

    Over the last `window` steps; a prefill chunk between two decode steps is not
    overhead, so such a gap is not counted.
    """

    def __init__(self, window: int = 64) -> None:
        self._forward: collections.deque[int] = collections.deque(maxlen=window)
        self._gaps: collections.deque[int] = collections.deque(maxlen=window)
        self._last_end_ns = 0

    def timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` as run on the device thread, its duration recorded as a decode forward."""

        def run(*args: Any) -> Any:
            start = time.monotonic_ns()
            try:
                return fn(*args)
            finally:
                end = time.monotonic_ns()
                self._forward.append(end - start)
                if self._last_end_ns:
                    self._gaps.append(start - self._last_end_ns)
                self._last_end_ns = end

        return run

    def interrupted(self) -> None:
        """Something other than a decode step ran: the next gap is not overhead."""
        self._last_end_ns = 0

    def step_ms(self) -> float:
        return _ms(sum(self._forward) // len(self._forward)) if self._forward else 0.0

    def overhead_ms(self) -> float:
        return _ms(sum(self._gaps) // len(self._gaps)) if self._gaps else 0.0


class DeviceActor(Actor):
    name = "device"

    def __init__(
        self, bus: Bus, supervisor: Supervisor, backend: DeviceBackend, *, max_running: int | None = None
    ) -> None:
        super().__init__(bus, supervisor)
        self.backend = backend
        caps = backend.capabilities
        # A backend that loses KV when another sequence runs can only hold one.
        limit = caps.max_batch if caps.kv_survives_switch else 1
        self.max_running = min(max_running or limit, limit)
        self._chunk = caps.prefill_chunk
        self._prefix_cache = caps.prefix_cache
        self._context_length = backend.info.context_length
        # The one thread that touches the device, for the life of the daemon.
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axchat-device")
        self._waiting: FairQueue[_Sequence] = FairQueue()
        self._running: dict[int, _Sequence] = {}
        self._wake = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None
        self._decode_next = False  # alternates prefill chunks with decode steps
        self.clock = DecodeClock()
        self._timed_decode = self.clock.timed(backend.decode)

    # ------------------------------------------------------------ mailbox

    async def on_start(self) -> None:
        self._stepper = asyncio.create_task(self._step_loop(), name="device-steps")
        self._stepper.add_done_callback(self._stepper_done)

    def _stepper_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            # The step loop must never die quietly: that would wedge every request.
            self.supervisor.on_handler_error(self, m.Close(), exc)

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.Admit):
            seq = _Sequence(msg.rid, msg.label, msg.client, msg.prompt_ids, msg.sampling, frozenset(msg.eos_ids))
            self._waiting.push(seq)
            if len(self._running) >= self.max_running:
                await self._announce_positions()  # it waits: say where it stands
            self._wake.set()
        elif isinstance(msg, m.Sampled):
            await self._sampled(msg)
        elif isinstance(msg, (m.CancelRequest, m.StopSequence)):
            reason: FinishReason = msg.reason if isinstance(msg, m.CancelRequest) else "stop"
            await self._stop(msg.rid, reason)
        elif isinstance(msg, m.StatusQuery):
            await self.send("telemetry", self._report(msg))
        else:
            raise TypeError(f"device got unexpected {type(msg).__name__}")

    def _report(self, query: m.StatusQuery) -> m.DeviceReport:
        requests = [s.info() for s in self._running.values()] + [s.info() for s in self._waiting.in_order()]
        entries, nbytes = self.backend.prefix_cache_usage()
        return m.DeviceReport(
            rid=query.rid,
            state=query.state,
            running=len(self._running),
            queued=len(self._waiting),
            kv_sequences=self.backend.live_sequences(),
            requests=requests,
            max_running=self.max_running,
            prefix_cache_entries=entries,
            prefix_cache_bytes=nbytes,
            step_ms=self.clock.step_ms(),
            overhead_ms_per_token=self.clock.overhead_ms(),
        )

    async def _sampled(self, msg: m.Sampled) -> None:
        seq = self._running.get(msg.rid)
        if seq is None or seq.state is not SeqState.SAMPLING:
            return  # ended while the sampler worked
        await self._take_token(seq, msg.token_id)

    async def _choose_next(self, seq: _Sequence, logits: Any, first: bool) -> None:
        """Hand a row of logits on for the next token. Greedy requests pick it here:
        an argmax costs microseconds, the round trip through the sampler actor
        (two hops and a copy of the row each way) about a millisecond a token."""
        seq.state = SeqState.SAMPLING
        if first:
            sampler = SequenceSampler(seq.sampling, seq.prompt_ids)
            seq.greedy = sampler if sampler.greedy else None
        if seq.greedy is not None:
            await self._take_token(seq, seq.greedy.choose(logits))
        elif first:
            await self.send(
                "sampler",
                m.Logits(rid=seq.rid, data=logits.tobytes(), sampling=seq.sampling, context_ids=seq.prompt_ids),
            )
        else:
            await self.send("sampler", m.Logits(rid=seq.rid, data=logits.tobytes()))

    async def _take_token(self, seq: _Sequence, token: int) -> None:
        now = time.monotonic_ns()
        if seq.completion_tokens == 0:
            seq.timings.first_token_ns = now
        seq.timings.last_token_ns = now
        if token in seq.eos_ids and not seq.sampling.ignore_eos:
            await self._end(seq, "stop")
            return
        seq.completion_tokens += 1
        await self.send("tokenizer", m.TokenOut(rid=seq.rid, token_id=token))
        full = len(seq.prompt_ids) + seq.completion_tokens >= self._context_length
        if seq.completion_tokens >= seq.sampling.max_tokens or full:
            await self._end(seq, "length")
        else:
            seq.next_token = token
            seq.state = SeqState.READY
            self._wake.set()

    async def _stop(self, rid: int, reason: FinishReason) -> None:
        waiting = self._waiting.remove(rid)
        if waiting is not None:
            await self._end(waiting, reason)
            await self._announce_positions()
            return
        seq = self._running.get(rid)
        if seq is None:
            return
        if seq.state is SeqState.COMPUTING:
            seq.pending_end = reason
        else:
            await self._end(seq, reason)

    async def _end(self, seq: _Sequence, reason: FinishReason, error: ErrorInfo | None = None) -> None:
        self._running.pop(seq.rid, None)
        keep = None
        if self._prefix_cache and reason != "error" and seq.prefilled:
            keep = (seq.client, seq.prompt_ids[: seq.prefilled] + seq.fed)
        # Queued behind any forward pass in flight, so KV is never freed under it.
        asyncio.get_running_loop().run_in_executor(self._device_thread, self.backend.release, seq.rid, keep)
        await self.send("sampler", m.ForgetSequence(rid=seq.rid))
        await self.send(
            "tokenizer",
            m.Ended(
                rid=seq.rid,
                reason=reason,
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=seq.completion_tokens,
                cached_tokens=seq.cached_tokens,
                timings=seq.timings,
                error=error,
            ),
        )
        self._wake.set()  # a slot may have opened

    # ------------------------------------------------------------ steps

    async def _step_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if await self._admit():
                await self._announce_positions()
            if await self._step():
                self._wake.set()  # more may be runnable

    async def _step(self) -> bool:
        """Run one prefill chunk or one decode step; False when nothing could run."""
        prefilling = [s for s in self._running.values() if s.state is SeqState.PREFILL]
        # Decode only once every running sequence has its next token: stepping the
        # first one back from the sampler alone would split the batch into singles.
        sampling = any(s.state is SeqState.SAMPLING for s in self._running.values())
        ready = [] if sampling else [s for s in self._running.values() if s.state is SeqState.READY]
        if ready and (self._decode_next or not prefilling):
            self._decode_next = False
            await self._decode(ready[: self.backend.capabilities.max_batch])
            return True
        if prefilling:
            self._decode_next = True
            self.clock.interrupted()
            await self._prefill_chunk(prefilling[0])
            return True
        return False

    async def _admit(self) -> bool:
        admitted = False
        while self._waiting and len(self._running) < self.max_running:
            seq = self._waiting.pop()
            seq.state = SeqState.PREFILL
            seq.queue_position = 0
            self._running[seq.rid] = seq
            admitted = True
        return admitted

    async def _announce_positions(self) -> None:
        for position, seq in enumerate(self._waiting.in_order(), start=1):
            if seq.queue_position != position:
                seq.queue_position = position
                await self.send("tokenizer", m.QueuePosition(rid=seq.rid, position=position))

    async def _forward(self, seqs: list[_Sequence], fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the device thread; None when it failed (the sequences are ended)."""
        for seq in seqs:
            seq.state = SeqState.COMPUTING
        try:
            return await asyncio.get_running_loop().run_in_executor(self._device_thread, fn, *args)
        except Exception as exc:
            log.exception("forward pass failed for requests %s", [s.label for s in seqs])
            for seq in seqs:
                await self._end(seq, "error", ErrorInfo(code="internal", message=f"device error: {exc}"))
            return None

    async def _prefill_chunk(self, seq: _Sequence) -> None:
        start = time.monotonic_ns()
        fresh = seq.timings.prefill_start_ns == 0
        if fresh:
            seq.timings.prefill_start_ns = start
            seq.timings.queue_ms = _ms(start - seq.admitted_ns)
        if fresh and self._prefix_cache:
            restored = await self._forward([seq], self.backend.start, seq.rid, seq.prompt_ids, seq.client)
            if restored is None:
                return
            seq.prefilled = seq.cached_tokens = int(restored)
            if await self._ended_during_forward(seq):
                return
        total = len(seq.prompt_ids)
        end = total if self._chunk is None else min(total, seq.prefilled + self._chunk)
        piece = seq.prompt_ids[seq.prefilled : end]
        fn = self.backend.extend if seq.prefilled or self._prefix_cache else self.backend.prefill
        logits = await self._forward([seq], fn, seq.rid, piece)
        if logits is None:
            return
        seq.timings.prefill_ms += _ms(time.monotonic_ns() - start)
        seq.prefilled = end
        if await self._ended_during_forward(seq):
            return
        if end < total:
            seq.state = SeqState.PREFILL  # more chunks; other users' steps go between
            return
        await self._choose_next(seq, logits, first=True)

    async def _decode(self, seqs: list[_Sequence]) -> None:
        for seq in seqs:
            seq.fed.append(seq.next_token)
        logits = await self._forward(seqs, self._timed_decode, [s.rid for s in seqs], [s.next_token for s in seqs])
        if logits is None:
            return
        for seq, row in zip(seqs, logits, strict=True):
            if await self._ended_during_forward(seq):
                continue
            await self._choose_next(seq, row, first=False)

    async def _ended_during_forward(self, seq: _Sequence) -> bool:
        if seq.pending_end is not None:
            await self._end(seq, seq.pending_end)
            return True
        return False

    async def on_close(self) -> None:
        if self._stepper is not None:
            self._stepper.cancel()
            await asyncio.wait([self._stepper])  # waits without swallowing our own cancel
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._device_thread, self.backend.close)
        self._device_thread.shutdown(wait=False)
