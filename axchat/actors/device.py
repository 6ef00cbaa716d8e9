"""Device actor: owns the backend and every sequence's KV; runs prefill and decode
steps on one device thread while its mailbox keeps answering."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from axchat.actors import messages as m
from axchat.actors.backends.base import DeviceBackend
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.protocol.v1 import ErrorInfo, FinishReason, Sampling

log = logging.getLogger(__name__)


class SeqState(enum.Enum):
    WAITING = "waiting"  # admitted, not yet given a slot
    NEW = "new"  # has a slot, needs its prefill
    COMPUTING = "computing"  # in a forward pass on the device thread
    SAMPLING = "sampling"  # logits are with the sampler
    READY = "ready"  # next token known, waiting for a decode step


@dataclass
class _Sequence:
    rid: int
    prompt_ids: list[int]
    sampling: Sampling
    eos_ids: frozenset[int]
    state: SeqState = SeqState.WAITING
    next_token: int = -1
    completion_tokens: int = 0
    # Set when a cancel arrives during a forward pass: acted on when it returns.
    pending_end: FinishReason | None = None
    admitted_ns: int = field(default_factory=time.monotonic_ns)
    timings: m.DeviceTimings = field(default_factory=m.DeviceTimings)


def _ms(ns: int) -> float:
    return ns / 1e6


class DeviceActor(Actor):
    name = "device"

    def __init__(self, bus: Bus, supervisor: Supervisor, backend: DeviceBackend, *, max_running: int | None = None) -> None:
        super().__init__(bus, supervisor)
        self.backend = backend
        caps = backend.capabilities
        # A backend that loses KV when another sequence runs can only hold one.
        limit = caps.max_batch if caps.kv_survives_switch else 1
        self._max_running = min(max_running or limit, limit)
        self._context_length = backend.info.context_length
        # The one thread that touches the device, for the life of the daemon.
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axchat-device")
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: dict[int, _Sequence] = {}
        self._wake = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ mailbox

    async def on_start(self) -> None:
        self._stepper = asyncio.create_task(self._step_loop(), name="device-steps")
        self._stepper.add_done_callback(self._stepper_done)

    def _stepper_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The step loop must never die quietly: that would wedge every request.
            self.supervisor.on_handler_error(self, m.Close(), task.exception())  # type: ignore[arg-type]

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.Admit):
            seq = _Sequence(msg.rid, msg.prompt_ids, msg.sampling, frozenset(msg.eos_ids))
            self._waiting.append(seq)
            self._wake.set()
        elif isinstance(msg, m.Sampled):
            await self._sampled(msg)
        elif isinstance(msg, (m.CancelRequest, m.StopSequence)):
            reason: FinishReason = msg.reason if isinstance(msg, m.CancelRequest) else "stop"
            await self._stop(msg.rid, reason)
        elif isinstance(msg, m.StatusQuery):
            await self.send(
                "telemetry",
                m.DeviceReport(
                    rid=msg.rid,
                    state=msg.state,
                    running=len(self._running),
                    queued=len(self._waiting),
                    kv_sequences=self.backend.live_sequences(),
                ),
            )
        else:
            raise TypeError(f"device got unexpected {type(msg).__name__}")

    async def _sampled(self, msg: m.Sampled) -> None:
        seq = self._running.get(msg.rid)
        if seq is None or seq.state is not SeqState.SAMPLING:
            return  # ended while the sampler worked
        now = time.monotonic_ns()
        if seq.completion_tokens == 0:
            seq.timings.first_token_ns = now
        seq.timings.last_token_ns = now
        token = msg.token_id
        if token in seq.eos_ids and not seq.sampling.ignore_eos:
            await self._end(seq, "stop")
            return
        seq.completion_tokens += 1
        await self.send("tokenizer", m.TokenOut(rid=seq.rid, token_id=token))
        if seq.completion_tokens >= seq.sampling.max_tokens or len(seq.prompt_ids) + seq.completion_tokens >= self._context_length:
            await self._end(seq, "length")
        else:
            seq.next_token = token
            seq.state = SeqState.READY
            self._wake.set()

    async def _stop(self, rid: int, reason: FinishReason) -> None:
        for seq in self._waiting:
            if seq.rid == rid:
                self._waiting.remove(seq)
                await self._end(seq, reason)
                return
        running = self._running.get(rid)
        if running is None:
            return
        seq = running
        if seq.state is SeqState.COMPUTING:
            seq.pending_end = reason
        else:
            await self._end(seq, reason)

    async def _end(self, seq: _Sequence, reason: FinishReason, error: ErrorInfo | None = None) -> None:
        self._running.pop(seq.rid, None)
        # Queued behind any forward pass in flight, so KV is never freed under it.
        asyncio.get_running_loop().run_in_executor(self._device_thread, self.backend.release, seq.rid)
        await self.send("sampler", m.ForgetSequence(rid=seq.rid))
        await self.send(
            "tokenizer",
            m.Ended(
                rid=seq.rid,
                reason=reason,
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=seq.completion_tokens,
                cached_tokens=0,
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
            self._admit()
            fresh = [s for s in self._running.values() if s.state is SeqState.NEW]
            if fresh:
                await self._prefill(fresh[0])
                self._wake.set()  # more may be runnable
                continue
            ready = [s for s in self._running.values() if s.state is SeqState.READY]
            if ready:
                await self._decode(ready[: self.backend.capabilities.max_batch])
                self._wake.set()

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self._max_running:
            seq = self._waiting.popleft()
            seq.state = SeqState.NEW
            self._running[seq.rid] = seq

    async def _forward(self, seqs: list[_Sequence], fn, *args):  # type: ignore[no-untyped-def]
        for seq in seqs:
            seq.state = SeqState.COMPUTING
        try:
            return await asyncio.get_running_loop().run_in_executor(self._device_thread, fn, *args)
        except Exception as exc:
            log.exception("forward pass failed for requests %s", [s.rid for s in seqs])
            for seq in seqs:
                await self._end(seq, "error", ErrorInfo(code="internal", message=f"device error: {exc}"))
            return None

    async def _prefill(self, seq: _Sequence) -> None:
        start = time.monotonic_ns()
        seq.timings.prefill_start_ns = start
        seq.timings.queue_ms = _ms(start - seq.admitted_ns)
        logits = await self._forward([seq], self.backend.prefill, seq.rid, seq.prompt_ids)
        if logits is None:
            return
        seq.timings.prefill_ms = _ms(time.monotonic_ns() - start)
        if await self._ended_during_forward(seq):
            return
        seq.state = SeqState.SAMPLING
        await self.send(
            "sampler",
            m.Logits(rid=seq.rid, data=logits.tobytes(), sampling=seq.sampling, context_ids=seq.prompt_ids),
        )

    async def _decode(self, seqs: list[_Sequence]) -> None:
        logits = await self._forward(
            seqs, self.backend.decode, [s.rid for s in seqs], [s.next_token for s in seqs]
        )
        if logits is None:
            return
        for seq, row in zip(seqs, logits, strict=True):
            if await self._ended_during_forward(seq):
                continue
            seq.state = SeqState.SAMPLING
            await self.send("sampler", m.Logits(rid=seq.rid, data=row.tobytes()))

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
