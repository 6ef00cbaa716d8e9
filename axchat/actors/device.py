"""Device actor: owns the backend and every sequence's KV; schedules prefill chunks
and batched decode steps on one device thread while its mailbox keeps answering.
With keep-alive it also unloads the backend when idle and loads it again, on that same
thread, when the next request comes (states in `actors/keepalive.py`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from axchat.actors import messages as m
from axchat.actors.backends.base import DeviceBackend
from axchat.actors.fair_queue import FairQueue
from axchat.actors.keepalive import LOADING_TICK_S, IdleTimer, LoadProgress, Residency, free_device_memory
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.prompt_chunks import ChunkSizer
from axchat.actors.sampling import SequenceSampler
from axchat.protocol.v1 import ErrorInfo, FinishReason, RequestInfo, Sampling

log = logging.getLogger(__name__)

# A prompt whose new (uncached) part is at most this many tokens goes in one forward,
# whatever the backend's chunk: a chat turn or a short question then costs one prefill,
# not a string of small chunks each queued behind a decode step (which, measured with
# bench/concurrency.py, cut 8 clients' aggregate rate by a third on a slow CPU). Longer
# prompts go in the backend's step-sized chunks so other streams keep moving.
WHOLE_PROMPT = 128
# Newcomers' whole prompts go in one forward together (backends with `prefill_rows`),
# up to this many tokens counting the padding to the longest: starting them together
# puts them in the same decode batch from their first token on, where one by one the
# first ones would decode alone, paying each later prompt's forward between their
# tokens. The bound keeps the pause it makes in running streams to a few prompts' worth;
# with no stream running there is nobody to pause, and the group is bounded by rows alone.
GROUP_TOKENS = 512
# How long an idle device waits for prompts the tokenizer says are still being encoded
# (a burst of clients), so that they go in the first forward with the first one. Measured
# with bench/concurrency.py (8 clients, llama.cpp, 2 cores): starting the first prompt
# alone made the other seven wait for its forward and then paused its stream for theirs.
GATHER_S = 0.1
# A burst reaches the tokenizer in batches (the front door reads a few frames at a time),
# so "none left encoding" can be said while the next batch is a fraction of a millisecond
# behind: with two or more newcomers, an idle device also waits until none has come for
# this long. A lone newcomer waits LONE_SHARE of what its own prefill is expected to
# take (from the prefills measured so far), at most QUIET_S: with 8 clients sending at
# once the first prompt was often admitted alone, 1-5 ms before the rest, and prefilled
# alone (0.2-0.6 s for 69 tokens on one core) while the other seven waited behind it.
QUIET_S = 0.02
LONE_SHARE = 0.05
# A long prompt's chunk when no other stream is decoding: nobody waits on it, so it goes
# in large pieces (with others decoding, ChunkSizer sizes each chunk like their step).
ALONE_CHUNK = 256

# Loads a backend on the device thread, telling the callback each stage it enters.
BackendLoader = Callable[[Callable[[str], None]], DeviceBackend]


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
    started: bool = False  # the backend holds KV for it (prefill or start has run)
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

    def recent_step_ms(self, last: int = 4) -> float | None:
        """The latest few decode forwards' mean: what the batch running now costs."""
        recent = list(self._forward)[-last:]
        return _ms(sum(recent) // len(recent)) if recent else None

    def overhead_ms(self) -> float:
        return _ms(sum(self._gaps) // len(self._gaps)) if self._gaps else 0.0


class DeviceActor(Actor):
    name = "device"

    def __init__(
        self,
        bus: Bus,
        supervisor: Supervisor,
        backend: DeviceBackend,
        *,
        max_running: int | None = None,
        keep_alive_s: float | None = None,
        loader: BackendLoader | None = None,
    ) -> None:
        super().__init__(bus, supervisor)
        # None while unloaded. Only this actor holds it, so dropping it frees the model.
        self.backend: DeviceBackend | None = backend
        caps = backend.capabilities
        # A backend that loses KV when another sequence runs can only hold one.
        limit = caps.max_batch if caps.kv_survives_switch else 1
        self.max_running = min(max_running or limit, limit)
        self._chunks = None if caps.prefill_chunk is None else ChunkSizer(caps.prefill_chunk, max(caps.prefill_chunk, ALONE_CHUNK))
        self._max_batch = caps.max_batch
        self._prefix_cache = caps.prefix_cache
        self._gone_connections: set[str] = set()  # disconnected, with sequences still ending
        self._prefill_rows = caps.prefill_rows
        self._mixed = caps.mixed_steps and caps.prefill_chunk is not None
        self._context_length = backend.info.context_length
        # The one thread that touches the device, for the life of the daemon.
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axchat-device")
        self._waiting: FairQueue[_Sequence] = FairQueue()
        self._running: dict[int, _Sequence] = {}
        self._wake = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None
        self._decode_next = False  # alternates prefill chunks with decode steps
        self._more_coming = 0  # prompts the tokenizer was encoding at the latest Admit
        self._gather_until: float | None = None  # monotonic deadline of a wait for them
        self._last_admit = 0.0  # monotonic time of the latest Admit
        self._prefill_ms_per_token: float | None = None  # of whole-prompt forwards, smoothed
        self.gather_s = GATHER_S
        # Keep-alive. The tokenizer stays loaded: it is small, and it must keep working
        # while the model is away (a prompt is tokenized before the device sees it).
        self._loader = loader
        self.residency = Residency.LOADED
        self._idle = IdleTimer(keep_alive_s if loader is not None else None, self._idle_expired)
        self._load: LoadProgress | None = None
        self._load_changed = asyncio.Event()
        self._last_load_s: float | None = None
        self._residency_task: asyncio.Task[None] | None = None
        self.clock = DecodeClock()

    # ------------------------------------------------------------ mailbox

    async def on_start(self) -> None:
        self._stepper = self.run_in_background(self._step_loop(), "device-steps")
        self._idle.start()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            # The step loop or a load must never die quietly: that would wedge every request.
            self.supervisor.on_handler_error(self, m.Close(), exc)

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.Admit):
            seq = _Sequence(msg.rid, msg.label, msg.client, msg.prompt_ids, msg.sampling, frozenset(msg.eos_ids))
            self._more_coming, self._last_admit = msg.more_coming, time.monotonic()
            self._idle.stop()
            self._waiting.push(seq)
            if self.residency is not Residency.LOADED:
                await self._need_model(seq)
            elif len(self._running) >= self.max_running:
                await self._announce_positions()  # it waits: say where it stands
            self._wake.set()
        elif isinstance(msg, m.Sampled):
            await self._sampled(msg)
        elif isinstance(msg, (m.CancelRequest, m.StopSequence)):
            reason: FinishReason = msg.reason if isinstance(msg, m.CancelRequest) else "stop"
            await self._stop(msg.rid, reason)
        elif isinstance(msg, m.StatusQuery):
            await self.send("telemetry", self._report(msg))
        elif isinstance(msg, m.ForgetClient):
            self._forget_client(msg.connection)
        else:
            raise TypeError(f"device got unexpected {type(msg).__name__}")

    def _forget_client(self, connection: str) -> None:
        if not self._prefix_cache:
            return
        # Its sequences still ending (a cancel lands at a step boundary) keep nothing.
        if any(m.connection_of(s.client) == connection for s in [*self._running.values(), *self._waiting.in_order()]):
            self._gone_connections.add(connection)
        if self.backend is not None:
            asyncio.get_running_loop().run_in_executor(self._device_thread, self.backend.forget_prefixes, connection)

    def _report(self, query: m.StatusQuery) -> m.DeviceReport:
        requests = [s.info() for s in self._running.values()] + [s.info() for s in self._waiting.in_order()]
        backend = self.backend
        entries, nbytes = backend.prefix_cache_usage() if backend is not None else (0, 0)
        return m.DeviceReport(
            rid=query.rid,
            state=query.state,
            running=len(self._running),
            queued=len(self._waiting),
            kv_sequences=backend.live_sequences() if backend is not None else 0,
            requests=requests,
            max_running=self.max_running,
            prefix_cache_entries=entries,
            prefix_cache_bytes=nbytes,
            # Still loaded until unloading has finished freeing it.
            loaded=self.residency in (Residency.LOADED, Residency.UNLOADING),
            unloads_at=self._idle.unloads_at,
            load_stage=self._load.stage if self._load is not None else None,
            step_ms=self.clock.step_ms(),
            overhead_ms_per_token=self.clock.overhead_ms(),
        )

    def temperature_c(self) -> float | None:
        """The backend's own reading; None while unloaded. For telemetry, which must not
        hold the backend itself (that would keep an unloaded model in memory)."""
        backend = self.backend
        return backend.temperature_c() if backend is not None else None

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
        connection = m.connection_of(seq.client)
        if self._prefix_cache and reason != "error" and seq.prefilled and connection not in self._gone_connections:
            keep = (seq.client, seq.prompt_ids[: seq.prefilled] + seq.fed)
        if connection in self._gone_connections and not any(
            m.connection_of(s.client) == connection for s in [*self._running.values(), *self._waiting.in_order()]
        ):
            self._gone_connections.discard(connection)
        # Queued behind any forward pass in flight, so KV is never freed under it. No
        # backend: the sequence waited for a reload and never had KV.
        if self.backend is not None:
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
        if not self._running and not self._waiting and self.residency is Residency.LOADED:
            self._idle.start()

    # ------------------------------------------------------------ steps

    async def _step_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.residency is not Residency.LOADED:
                continue  # the reload wakes us when the model is back
            if await self._admit():
                await self._announce_positions()
            if await self._step():
                self._wake.set()  # more may be runnable

    async def _step(self) -> bool:
        """Run one prefill forward or one decode step (which may carry a long prompt's
        chunk); False when nothing could run."""
        prefilling = [s for s in self._running.values() if s.state is SeqState.PREFILL]
        # Decode only once every running sequence has its next token: stepping the
        # first one back from the sampler alone would split the batch into singles.
        sampling = any(s.state is SeqState.SAMPLING for s in self._running.values())
        ready = [] if sampling else [s for s in self._running.values() if s.state is SeqState.READY]
        if prefilling and not (ready and self._decode_next):
            if self._still_gathering(prefilling):
                return False  # the next Admit, or the deadline, wakes the loop
            if self._prefill_rows > 1:
                # Short prompts first: one goes in a forward, where a long one would
                # hold them for all of its chunks.
                group = await self._prefill_group(prefilling)
                if group:
                    self._decode_next = True
                    self.clock.interrupted()
                    if len(group) > 1:
                        await self._prefill_together(group)
                    else:
                        await self._prefill_chunk(group[0])
                    return True
                prefilling = [s for s in prefilling if s.rid in self._running and s.state is SeqState.PREFILL]
            # Only long prompts left. With streams to decode, and a backend that can, a
            # chunk rides in their decode step (below); else it takes a forward alone.
            if prefilling and not (ready and self._mixed):
                self._decode_next = True
                self.clock.interrupted()
                await self._prefill_chunk(prefilling[0])
                return True
        if ready:
            self._decode_next = False
            batch = ready[: self._max_batch]
            rider = next((s for s in prefilling if s.started and s.state is SeqState.PREFILL), None)
            if self._mixed and rider is not None:
                await self._decode_with_chunk(batch, rider)
            else:
                await self._decode(batch)
            return True
        return False

    def _still_gathering(self, prefilling: list[_Sequence]) -> bool:
        """True while an idle device waits for prompts still on their way (those the
        tokenizer is encoding, up to `gather_s`; else a quiet moment after the latest
        Admit), so that a burst of newcomers is prefilled in one forward and starts
        decoding together. Never while a stream decodes or a prompt is part fed: they
        would pay for the wait."""
        busy = len(self._running) != len(prefilling) or any(s.started for s in prefilling)
        room = min(self._prefill_rows, self.max_running) - len(prefilling)
        if busy or room <= 0 or self._prefill_rows <= 1:
            self._gather_until = None
            return False
        now = time.monotonic()
        if self._gather_until is None:
            self._gather_until = now + self.gather_s
        if len(prefilling) > 1:
            quiet = QUIET_S
        else:
            new = len(prefilling[0].prompt_ids)  # the cached part is not known yet: an upper bound
            quiet = min(QUIET_S, LONE_SHARE * (self._prefill_ms_per_token or 0.0) * new / 1e3)
        until = self._gather_until if self._more_coming > 0 else min(self._gather_until, self._last_admit + quiet)
        if now < until:
            asyncio.get_running_loop().call_later(until - now, self._wake.set)
            return True
        self._gather_until, self._more_coming = None, 0  # no more came: go without them
        return False

    def _prefill_measured(self, tokens: int, ms: float) -> None:
        if tokens > 0:
            old, cost = self._prefill_ms_per_token, ms / tokens
            self._prefill_ms_per_token = cost if old is None else (cost + old) / 2

    async def _prefill_group(self, prefilling: list[_Sequence]) -> list[_Sequence]:
        """Newcomers whose (uncached) prompts go whole in one forward together, oldest
        first within GROUP_TOKENS. Their cached prefixes are restored first (one call on
        the device thread for all), since only then is it known what is left to feed."""
        fresh = [s for s in prefilling if not s.started]
        if fresh:
            await self._start(fresh)
        group: list[_Sequence] = []
        width = 0  # the longest piece in the group: every row is padded to it
        decoding = len(prefilling) != len(self._running)
        for seq in prefilling:
            # A long prompt's last chunk is not a short prompt: it keeps its own pace.
            if seq.rid not in self._running or seq.state is not SeqState.PREFILL or not self._whole(seq):
                continue
            wider = max(width, len(seq.prompt_ids) - seq.prefilled)
            too_wide = decoding and wider * (len(group) + 1) > GROUP_TOKENS
            if group and (too_wide or len(group) == self._prefill_rows):
                break
            group.append(seq)
            width = wider
        return group

    def _whole(self, seq: _Sequence) -> bool:
        """Its prompt, less the cached prefix, goes in one forward (not in chunks)."""
        return self._chunks is None or len(seq.prompt_ids) - seq.cached_tokens <= WHOLE_PROMPT

    async def _start(self, seqs: list[_Sequence]) -> None:
        """Give each sequence its KV, with the longest cached prefix of its prompt."""
        now = time.monotonic_ns()
        for seq in seqs:
            seq.started = True
            seq.timings.prefill_start_ns = now
            seq.timings.queue_ms = _ms(now - seq.admitted_ns)
        backend = self._loaded()
        restored = await self._forward(
            seqs, lambda: [backend.start(s.rid, s.prompt_ids, s.client) for s in seqs]
        )
        if restored is None:
            return
        spent = _ms(time.monotonic_ns() - now)
        for seq, n in zip(seqs, restored, strict=True):
            seq.prefilled = seq.cached_tokens = int(n)
            seq.state = SeqState.PREFILL
            seq.timings.prefill_ms += spent
            await self._ended_during_forward(seq)

    async def _prefill_together(self, group: list[_Sequence]) -> None:
        """The rest of each prompt in `group`, in one forward."""
        start = time.monotonic_ns()
        backend = self._loaded()
        pieces = [s.prompt_ids[s.prefilled :] for s in group]
        logits = await self._forward(group, backend.extend_batch, [s.rid for s in group], pieces)
        if logits is None:
            return
        spent = _ms(time.monotonic_ns() - start)
        self._prefill_measured(sum(len(p) for p in pieces), spent)
        for seq, row in zip(group, logits, strict=True):
            seq.timings.prefill_ms += spent
            await self._prompt_fed(seq, len(seq.prompt_ids), row)

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
        if self.residency is not Residency.LOADED:
            return  # they wait for the model, and hear `loading` instead
        for position, seq in enumerate(self._waiting.in_order(), start=1):
            if seq.queue_position != position:
                seq.queue_position = position
                await self.send("tokenizer", m.QueuePosition(rid=seq.rid, position=position))

    # ------------------------------------------------------------ keep-alive

    def _idle_expired(self) -> None:
        if self._running or self._waiting or self.residency is not Residency.LOADED:
            return  # a request slipped in as the timer fired
        self.residency = Residency.UNLOADING
        self._residency_task = asyncio.create_task(self._unload(), name="device-unload")
        self._residency_task.add_done_callback(self._task_done)

    async def _unload(self) -> None:
        backend, self.backend = self.backend, None
        assert backend is not None
        log.info("keep-alive: no request for %gs; unloading the model", self._idle.keep_alive_s)
        loop = asyncio.get_running_loop()
        try:
            # On the device thread, after any release still queued there.
            await loop.run_in_executor(self._device_thread, backend.close)
        except Exception:
            log.exception("closing the backend failed; dropping it anyway")
        gone = weakref.ref(backend)
        del backend
        await loop.run_in_executor(self._device_thread, free_device_memory)
        self.residency = Residency.UNLOADED
        if gone() is None:
            log.info("keep-alive: model unloaded and its memory freed; the next request loads it again")
        else:
            # A bug: something else holds the backend, so its memory stays taken.
            log.warning("keep-alive: model unloaded but still referenced elsewhere; its memory is not freed")
        if self._waiting:
            self._begin_reload()  # a request came while it was unloading

    async def _need_model(self, seq: _Sequence) -> None:
        """`seq` arrived while the model is not loaded: start loading it, or say how far
        the load in progress has got."""
        if self.residency is Residency.UNLOADED:
            self._begin_reload()
        elif self.residency is Residency.LOADING and self._load is not None:
            await self.send("tokenizer", self._loading_event(seq, self._load))
        # UNLOADING: `_unload` starts the reload once the device is free.

    def _begin_reload(self) -> None:
        self.residency = Residency.LOADING
        self._load = LoadProgress()
        self._residency_task = asyncio.create_task(self._reload(self._load), name="device-reload")
        self._residency_task.add_done_callback(self._task_done)

    async def _reload(self, progress: LoadProgress) -> None:
        assert self._loader is not None
        loop = asyncio.get_running_loop()

        def stage(name: str) -> None:  # called on the device thread
            loop.call_soon_threadsafe(self._stage_entered, progress, name)

        log.info("keep-alive: a request arrived; loading the model again")
        teller = asyncio.create_task(self._tell_loading(progress), name="device-loading-events")
        try:
            backend = await loop.run_in_executor(self._device_thread, self._loader, stage)
        except Exception as exc:
            log.exception("reloading the model failed")
            self._load, self.residency = None, Residency.UNLOADED
            error = ErrorInfo(code="load_failed", message=f"loading the model again failed: {exc}")
            while self._waiting:
                await self._end(self._waiting.pop(), "error", error)
            return
        finally:
            teller.cancel()
            await asyncio.wait([teller])
        self._last_load_s = progress.elapsed_s()
        self.backend, self._load, self.residency = backend, None, Residency.LOADED
        log.info("keep-alive: model loaded again in %.1fs", self._last_load_s)
        if self._waiting:
            self._wake.set()
        else:
            self._idle.start()  # everyone who waited cancelled

    def _stage_entered(self, progress: LoadProgress, name: str) -> None:
        progress.stage = name
        self._load_changed.set()

    async def _tell_loading(self, progress: LoadProgress) -> None:
        """Every waiting request hears where the load stands: at each new stage and
        once a tick between, so its client sees progress rather than silence."""
        while True:
            self._load_changed.clear()
            for seq in list(self._waiting.in_order()):
                if seq.rid in self._waiting.positions():  # not cancelled during a send
                    await self.send("tokenizer", self._loading_event(seq, progress))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOADING_TICK_S):
                    await self._load_changed.wait()

    def _loading_event(self, seq: _Sequence, progress: LoadProgress) -> m.Loading:
        return m.Loading(
            rid=seq.rid, stage=progress.stage, elapsed_s=progress.elapsed_s(), last_load_s=self._last_load_s
        )

    # ------------------------------------------------------------ forward passes

    def _loaded(self) -> DeviceBackend:
        # Steps run only while LOADED (the step loop checks), and unloading waits for idle.
        assert self.backend is not None, "a step ran while the model was unloaded"
        return self.backend

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
        if not seq.started and self._prefix_cache:
            await self._start([seq])
            if seq.rid not in self._running:
                return  # the restore failed, or it was cancelled meanwhile
        start = time.monotonic_ns()
        if seq.timings.prefill_start_ns == 0:
            seq.timings.prefill_start_ns = start
            seq.timings.queue_ms = _ms(start - seq.admitted_ns)
        total = len(seq.prompt_ids)
        whole = self._whole(seq)
        if whole:
            end = total
        else:
            assert self._chunks is not None
            decoding = any(s is not seq and s.prefilled >= len(s.prompt_ids) for s in self._running.values())
            end = min(total, seq.prefilled + self._chunks.next(self.clock.recent_step_ms() if decoding else None))
        piece = seq.prompt_ids[seq.prefilled : end]
        backend = self._loaded()
        fn = backend.extend if seq.started else backend.prefill
        seq.started = True
        forward_start = time.monotonic_ns()
        logits = await self._forward([seq], fn, seq.rid, piece)
        if logits is None:
            return
        if not whole and self._chunks is not None:
            self._chunks.observe(len(piece), _ms(time.monotonic_ns() - forward_start))
        elif whole:
            self._prefill_measured(len(piece), _ms(time.monotonic_ns() - forward_start))
        seq.timings.prefill_ms += _ms(time.monotonic_ns() - start)
        await self._prompt_fed(seq, end, logits)

    async def _prompt_fed(self, seq: _Sequence, end: int, logits: Any) -> None:
        """A forward fed `seq`'s prompt up to `end`; `logits` are those after it."""
        seq.prefilled = end
        if await self._ended_during_forward(seq):
            return
        if end < len(seq.prompt_ids):
            seq.state = SeqState.PREFILL  # more chunks; other users' steps go between
        else:
            await self._choose_next(seq, logits, first=True)

    async def _decode(self, seqs: list[_Sequence]) -> None:
        for seq in seqs:
            seq.fed.append(seq.next_token)
        # Timed per call, not wrapped once: a kept bound method would hold the backend
        # (and so an unloaded model) alive.
        logits = await self._forward(
            seqs, self.clock.timed(self._loaded().decode), [s.rid for s in seqs], [s.next_token for s in seqs]
        )
        if logits is not None:
            await self._decoded(seqs, logits)

    async def _decode_with_chunk(self, seqs: list[_Sequence], rider: _Sequence) -> None:
        """A decode step for `seqs` carrying the next chunk of `rider`'s long prompt.
        The chunk is sized so that what it adds to the step is about one step (measured):
        the streams then wait about two steps a token while the prompt goes in."""
        assert self._chunks is not None
        for seq in seqs:
            seq.fed.append(seq.next_token)
        step_ms = self.clock.recent_step_ms()
        total = len(rider.prompt_ids)
        end = min(total, rider.prefilled + self._chunks.next(step_ms or 0.0))
        piece = rider.prompt_ids[rider.prefilled : end]
        self.clock.interrupted()  # longer than a decode step: not one for the clock
        start = time.monotonic_ns()
        result = await self._forward(
            [*seqs, rider], self._loaded().decode_and_extend,
            [s.rid for s in seqs], [s.next_token for s in seqs], rider.rid, piece,
        )
        if result is None:
            return
        spent = _ms(time.monotonic_ns() - start)
        if step_ms:
            self._chunks.observe(len(piece), max(spent - step_ms, spent * 0.05))
        logits, chunk_logits = result
        rider.timings.prefill_ms += spent
        await self._prompt_fed(rider, end, chunk_logits)
        await self._decoded(seqs, logits)

    async def _decoded(self, seqs: list[_Sequence], logits: Any) -> None:
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
        self._idle.stop()
        for task in (self._stepper, self._residency_task):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])  # waits without swallowing our own cancel
        loop = asyncio.get_running_loop()
        # Queued behind an unload or a load still running there; a cancelled load's
        # backend is lost with the process.
        if self.backend is not None:
            await loop.run_in_executor(self._device_thread, self.backend.close)
        self._device_thread.shutdown(wait=False)
