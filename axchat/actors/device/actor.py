"""Device actor: owns the backend (through its residency) and every sequence's KV; asks
the planner for each next step and runs it on the device thread while its mailbox keeps
answering. With keep-alive it also unloads the backend when idle and loads it again, on
that same thread, when the next request comes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from axchat.actors import messages as m
from axchat.actors.backends.base import DeviceBackend
from axchat.actors.device import planner, run_ahead
from axchat.actors.device.burst import Burst
from axchat.actors.device.clock import DecodeClock, PrefillRate
from axchat.actors.device.device_thread import BackendReadings, DeviceThread
from axchat.actors.device.fair_queue import FairQueue
from axchat.actors.device.peers import ONE_DEVICE, Peers
from axchat.actors.device.residency import BackendLoader, LoadProgress, Residency, ResidentModel
from axchat.actors.device.sequence import DeviceSequence, SeqState, ms
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.token_choice import SequenceSampler
from axchat.protocol.v1 import FinishReason

log = logging.getLogger(__name__)


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
        name: str = "device",
        peers: Peers = ONE_DEVICE,
    ) -> None:
        self.name = name  # before the inbox is bound under it
        super().__init__(bus, supervisor)
        self._peers = peers
        # Fixed at load (a reload loads the same model with the same options), so read
        # once here rather than from a backend that may be unloaded later.
        self._limits = planner.StepLimits.of(backend.capabilities)
        self._context_length = backend.info.context_length
        self.max_running = self._limits.running_limit(max_running)
        self._chunks = self._limits.chunk_sizer()
        self._gone_connections: set[str] = set()  # disconnected, with sequences still ending
        # The one thread that touches the device, for the life of the daemon.
        self._thread = DeviceThread(lambda: self.backend, name=f"axchat-{name}")
        self._sent_temperature: float | None = None
        self._waiting: FairQueue[DeviceSequence] = FairQueue()
        self._running: dict[int, DeviceSequence] = {}
        self._wake = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None
        self._decode_next = False  # alternates prefill work with decode steps
        # Set by anything that arrives for the device: a run of greedy steps on the
        # device thread ends at its next step boundary (run_ahead.py).
        self._interrupt = threading.Event()
        # Newcomers on their way, for an idle device's wait (times on the loop's clock).
        self.burst = Burst(self._wake.set)
        self.prefill_rate = PrefillRate()
        # Keep-alive. The tokenizer stays loaded: it is small, and it must keep working
        # while the model is away (a prompt is tokenized before the device sees it).
        self._model = ResidentModel(
            backend, self._thread, loader, keep_alive_s, wanted=self._wanted, tell_loading=self._tell_loading,
            load_ended=self._load_ended, failed=self._residency_failed, name=name,
            moved=self._residency_moved if peers.residency is not None else None,
        )
        self.clock = DecodeClock()

    @property
    def backend(self) -> DeviceBackend | None:
        """None while unloaded. Only this actor holds it, so dropping it frees the model."""
        return self._model.backend

    @property
    def residency(self) -> Residency:
        return self._model.state

    # ------------------------------------------------------------ mailbox

    async def on_start(self) -> None:
        self._stepper = self.run_in_background(self._step_loop(), f"{self.name}-steps")
        self._model.idle.start()
        await self._publish(await self._thread.read())  # telemetry's first reading

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, (m.Admit, m.CancelRequest, m.StopSequence)):
            self._interrupt.set()
        if isinstance(msg, m.Admit):
            seq = DeviceSequence(msg.rid, msg.label, msg.client, msg.prompt_ids, msg.sampling, frozenset(msg.eos_ids))
            if msg.queued_since_ns:
                seq.admitted_ns = msg.queued_since_ns  # waited in a placer's line first
            self.burst.admitted(msg.more_coming)
            self._model.idle.stop()
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
            await self._report(msg)
        elif isinstance(msg, m.ForgetClient):
            self._forget_client(msg.connection)
        else:
            raise TypeError(f"{self.name} got unexpected {type(msg).__name__}")

    def _forget_client(self, connection: str) -> None:
        if not self._limits.prefix_cache:
            return
        # Its sequences still ending (a cancel lands at a step boundary) keep nothing.
        if any(m.connection_of(s.client) == connection for s in [*self._running.values(), *self._waiting.in_order()]):
            self._gone_connections.add(connection)
        backend = self.backend
        if backend is not None:
            self._thread.spawn(backend.forget_prefixes, connection)

    async def _report(self, query: m.StatusQuery) -> None:
        # The backend is read on its own thread: fresh when that is free, else as of the
        # end of the forward before the one running now.
        readings = await self._thread.read()
        await self._publish(readings)
        requests = [s.info() for s in self._running.values()] + [s.info() for s in self._waiting.in_order()]
        filled = msgspec.structs.replace(
            query.reply,
            running=len(self._running),
            queued=len(self._waiting),
            kv_sequences=readings.kv_sequences,
            requests=requests,
            max_running=self.max_running,
            prefix_cache_entries=readings.prefix_cache_entries,
            prefix_cache_bytes=readings.prefix_cache_bytes,
            loaded=self._model.loaded,
            unloads_at=self._model.idle.unloads_at,
            load_stage=self._model.load.stage if self._model.load is not None else None,
            step_ms=self.clock.step_ms(),
            overhead_ms_per_token=self.clock.overhead_ms(),
        )
        await self.send(self._peers.status, m.StatusQuery(rid=query.rid, reply=filled))

    async def _publish(self, readings: BackendReadings) -> None:
        """Telemetry hears the device's temperature when it changes (it must not hold the
        backend itself: that would keep an unloaded model in memory)."""
        if readings.temperature_c != self._sent_temperature:
            self._sent_temperature = readings.temperature_c
            await self.send(self._peers.reply, m.DeviceReading(device=self.name, temperature_c=readings.temperature_c))

    async def _sampled(self, msg: m.Sampled) -> None:
        seq = self._running.get(msg.rid)
        if seq is None or seq.state is not SeqState.SAMPLING:
            return  # ended while the sampler worked
        await self._take_tokens(seq, [msg.token_id])

    async def _choose_next(self, seq: DeviceSequence, logits: Any, first: bool) -> None:
        """Hand a row of logits on for the next token. Greedy requests pick it here:
        an argmax costs microseconds, the round trip through the sampler actor
        (two hops and a copy of the row each way) about a millisecond a token."""
        seq.state = SeqState.SAMPLING
        if first:
            sampler = SequenceSampler(seq.sampling, seq.prompt_ids)
            seq.greedy = sampler if sampler.greedy else None
        if seq.greedy is not None:
            await self._take_tokens(seq, [seq.greedy.choose(logits)])
        elif first:
            sampling, context = seq.sampling, seq.prompt_ids
            row = m.Logits(rid=seq.rid, data=logits.tobytes(), sampling=sampling, context_ids=context, reply_to=self.name)
            await self.send(self._peers.sampler, row)
        else:
            await self.send(self._peers.sampler, m.Logits(rid=seq.rid, data=logits.tobytes()))

    async def _take_tokens(self, seq: DeviceSequence, tokens: list[int]) -> None:
        """`seq`'s next tokens, in order: emitted in one message up to the first that
        ends it (an end-of-turn id, its length limit, the context's end)."""
        now = time.monotonic_ns()
        if seq.completion_tokens == 0:
            seq.timings.first_token_ns = now
        seq.timings.last_token_ns = now
        out: list[int] = []
        end: FinishReason | None = None
        for token in tokens:
            if token in seq.eos_ids and not seq.sampling.ignore_eos:
                end = "stop"
                break
            seq.completion_tokens += 1
            out.append(token)
            if self._room(seq) <= 0:
                end = "length"
                break
        if out:
            await self._emit(seq, out)
        if end is not None:
            await self._end(seq, end)
        else:
            seq.next_token = out[-1]
            seq.state = SeqState.READY
            self._wake.set()

    def _room(self, seq: DeviceSequence) -> int:
        """Tokens `seq` may still produce: its length limit or the context's end."""
        used = seq.completion_tokens
        return min(seq.sampling.max_tokens - used, self._context_length - len(seq.prompt_ids) - used)

    async def _emit(self, seq: DeviceSequence, tokens: list[int]) -> None:
        """The one place generated tokens leave the device (for the tokenizer)."""
        await self.send(self._peers.tokenizer, m.TokenOut(rid=seq.rid, token_ids=tokens))

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

    async def _end(self, seq: DeviceSequence, reason: FinishReason, error: m.Failure | None = None) -> None:
        self._running.pop(seq.rid, None)
        keep = None
        connection = m.connection_of(seq.client)
        if self._limits.prefix_cache and reason != "error" and seq.prefilled and connection not in self._gone_connections:
            keep = (seq.client, seq.prompt_ids[: seq.prefilled] + seq.fed)
        if connection in self._gone_connections and not any(
            m.connection_of(s.client) == connection for s in [*self._running.values(), *self._waiting.in_order()]
        ):
            self._gone_connections.discard(connection)
        # Queued behind any forward pass in flight, so KV is never freed under it. No
        # backend: the sequence waited for a reload and never had KV.
        backend = self.backend
        if backend is not None:
            self._thread.spawn(backend.release, seq.rid, keep)
        await self.send(self._peers.sampler, m.ForgetSequence(rid=seq.rid))
        ended = seq.ended(reason, error, self.name)
        await self.send(self._peers.tokenizer, ended)
        if self._peers.ended is not None:
            await self.send(self._peers.ended, ended)
        self._wake.set()  # a slot may have opened
        if not self._running and not self._waiting and self.residency is Residency.LOADED:
            self._model.idle.start()

    # ------------------------------------------------------------ steps

    async def _step_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.residency is not Residency.LOADED:
                continue  # the reload wakes us when the model is back
            if self._admit():
                await self._announce_positions()
            if await self._step():
                self._wake.set()  # more may be runnable

    def _admit(self) -> bool:
        chosen = planner.admissions(self._waiting.in_order(), len(self._running), self.max_running)
        for expected in chosen:
            seq = self._waiting.pop()
            assert seq is expected, "the planner admits in the fair queue's order"
            seq.state = SeqState.PREFILL
            seq.queue_position = 0
            self._running[seq.rid] = seq
        return bool(chosen)

    def _plan(self) -> planner.Plan | None:
        return planner.next_step(
            list(self._running.values()),
            self._limits,
            decode_next=self._decode_next,
            recent_step_ms=self.clock.recent_step_ms(),
            chunks=self._chunks,
            arrivals=self.burst.arrivals(self.prefill_rate.ms_per_token(), self.max_running),
        )

    async def _step(self) -> bool:
        """Run the planner's next step; False when nothing could run."""
        plan = self._plan()
        restored = False
        while isinstance(plan, planner.Restore):
            # Only restored prefixes tell what is left to feed, so the step goes on with
            # the same sequences: newcomers that arrived meanwhile wait for the next step
            # rather than growing this one's group (and delaying those already in it).
            await self._restore(list(plan.seqs))
            restored = True
            plan = self._plan()
        if isinstance(plan, planner.Wait):
            self.burst.wait_until(plan.until)
            return restored
        if self.burst.since is not None:
            self.burst.ended()
        if plan is None:
            return restored
        if isinstance(plan, planner.PREFILL_PLANS):
            self._decode_next = True  # the streams' turn next
            self.clock.interrupted()
        elif isinstance(plan, (planner.Decode, planner.DecodeWithChunk)):
            self._decode_next = False
        await self._run(plan)
        return True

    async def _run(self, plan: planner.Forward) -> None:
        if isinstance(plan, planner.PrefillGroup):
            await self._prefill_together(list(plan.seqs))
        elif isinstance(plan, planner.PrefillPiece):
            await self._prefill_piece(plan)
        elif isinstance(plan, planner.Decode):
            await self._decode(list(plan.seqs))
        else:
            await self._decode_with_chunk(plan)

    async def _announce_positions(self) -> None:
        if self.residency is not Residency.LOADED:
            return  # they wait for the model, and hear `loading` instead
        for position, seq in enumerate(self._waiting.in_order(), start=1):
            if seq.queue_position != position:
                seq.queue_position = position
                await self.send(self._peers.tokenizer, m.QueuePosition(rid=seq.rid, position=position))

    # ------------------------------------------------------------ keep-alive

    def _wanted(self) -> bool:
        return bool(self._running or self._waiting)

    async def _need_model(self, seq: DeviceSequence) -> None:
        """`seq` arrived while the model is not loaded: it hears how far the load in
        progress has got (a load that starts now tells everyone waiting at once)."""
        progress = self._model.wanted_back()
        if progress is not None:
            await self.send(self._peers.tokenizer, self._loading_event(seq, progress))

    async def _tell_loading(self, progress: LoadProgress) -> None:
        for seq in list(self._waiting.in_order()):
            if seq.rid in self._waiting.positions():  # not cancelled during a send
                await self.send(self._peers.tokenizer, self._loading_event(seq, progress))

    def _loading_event(self, seq: DeviceSequence, progress: LoadProgress) -> m.Loading:
        return m.Loading(
            rid=seq.rid, stage=progress.stage, elapsed_s=progress.elapsed_s(), last_load_s=self._model.last_load_s
        )

    async def _load_ended(self, error: Exception | None) -> None:
        if error is not None:
            info = m.Failure(code="load_failed", message=f"loading the model again failed: {error}")
            while self._waiting:
                await self._end(self._waiting.pop(), "error", info)
        elif self._waiting:
            self._wake.set()
        else:
            self._model.idle.start()  # everyone who waited cancelled

    async def _residency_moved(self, loaded: bool) -> None:  # a placer places by it
        await self.send(self._peers.residency or "", m.DeviceResidency(device=self.name, loaded=loaded))

    def _residency_failed(self, exc: BaseException) -> None:
        # An unload or a load must never die quietly: that would wedge every request.
        self.supervisor.on_handler_error(self, m.Close(), exc)

    # ------------------------------------------------------------ forward passes

    def _loaded(self) -> DeviceBackend:
        # Steps run only while LOADED (the step loop checks), and unloading waits for idle.
        backend = self.backend
        assert backend is not None, "a step ran while the model was unloaded"
        return backend

    async def _forward(self, seqs: list[DeviceSequence], fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the device thread; None when it failed (the sequences are ended)."""
        for seq in seqs:
            seq.state = SeqState.COMPUTING
        try:
            result = await self._thread.run(fn, *args)
        except Exception as exc:
            log.exception("forward pass failed for requests %s", [s.label for s in seqs])
            for seq in seqs:
                await self._end(seq, "error", m.Failure(code="internal", message=f"device error: {exc}"))
            return None
        await self._publish(self._thread.readings)
        return result

    async def _restore(self, seqs: list[DeviceSequence]) -> None:
        """Give each sequence its KV, with the longest cached prefix of its prompt."""
        now = time.monotonic_ns()
        for seq in seqs:
            seq.started = True
            seq.timings.prefill_start_ns = now
            seq.timings.queue_ms = ms(now - seq.admitted_ns)
        backend = self._loaded()
        restored = await self._forward(
            seqs, lambda: [backend.start(s.rid, s.prompt_ids, s.client) for s in seqs]
        )
        if restored is None:
            return
        spent = ms(time.monotonic_ns() - now)
        for seq, n in zip(seqs, restored, strict=True):
            seq.prefilled = seq.cached_tokens = int(n)
            seq.state = SeqState.PREFILL
            seq.timings.prefill_ms += spent
            await self._ended_during_forward(seq)

    async def _prefill_together(self, group: list[DeviceSequence]) -> None:
        """The rest of each prompt in `group`, in one forward."""
        start = time.monotonic_ns()
        pieces = [s.prompt_ids[s.prefilled :] for s in group]
        logits = await self._forward(group, self._loaded().extend_batch, [s.rid for s in group], pieces)
        if logits is None:
            return
        spent = ms(time.monotonic_ns() - start)
        self.prefill_rate.observe(sum(len(p) for p in pieces), spent)
        for seq, row in zip(group, logits, strict=True):
            seq.timings.prefill_ms += spent
            await self._prompt_fed(seq, len(seq.prompt_ids), row)

    async def _prefill_piece(self, plan: planner.PrefillPiece) -> None:
        seq, end = plan.seq, plan.end
        start = time.monotonic_ns()
        if seq.timings.prefill_start_ns == 0:
            seq.timings.prefill_start_ns = start
            seq.timings.queue_ms = ms(start - seq.admitted_ns)
        piece = seq.prompt_ids[seq.prefilled : end]
        backend = self._loaded()
        fn = backend.extend if seq.started else backend.prefill
        seq.started = True
        logits = await self._forward([seq], fn, seq.rid, piece)
        if logits is None:
            return
        if not plan.whole and self._chunks is not None:
            self._chunks.observe(len(piece), ms(time.monotonic_ns() - start))
        elif plan.whole:
            self.prefill_rate.observe(len(piece), ms(time.monotonic_ns() - start))
        seq.timings.prefill_ms += ms(time.monotonic_ns() - start)
        await self._prompt_fed(seq, end, logits)

    async def _prompt_fed(self, seq: DeviceSequence, end: int, logits: Any) -> None:
        """A forward fed `seq`'s prompt up to `end`; `logits` are those after it."""
        seq.prefilled = end
        if await self._ended_during_forward(seq):
            return
        if end < len(seq.prompt_ids):
            seq.state = SeqState.PREFILL  # more chunks; other users' steps go between
        else:
            await self._choose_next(seq, logits, first=True)

    async def _decode(self, seqs: list[DeviceSequence]) -> None:
        for seq in seqs:
            seq.fed.append(seq.next_token)
        if self._may_run_ahead(seqs):
            await self._decode_run(seqs)
            return
        # Timed per call, not wrapped once: a kept bound method would hold the backend
        # (and so an unloaded model) alive.
        logits = await self._forward(
            seqs, self.clock.timed(self._loaded().decode), [s.rid for s in seqs], [s.next_token for s in seqs]
        )
        if logits is not None:
            await self._decoded(seqs, logits)

    def _may_run_ahead(self, seqs: list[DeviceSequence]) -> bool:
        """Every running stream is in this step and greedy, and nobody waits for a slot:
        the steps after this one need nothing from the loop."""
        return (
            len(seqs) == len(self._running)
            and not self._waiting
            and all(s.greedy is not None and s.pending_end is None for s in seqs)
        )

    async def _decode_run(self, seqs: list[DeviceSequence]) -> None:
        """Decode steps on the device thread until a bound (run_ahead.py); then each
        stream's tokens are taken in one pass, as one step's would be."""
        self._interrupt.clear()  # on the loop, where anything arriving later sets it
        lanes = []
        for seq in seqs:
            assert seq.greedy is not None
            ends = frozenset() if seq.sampling.ignore_eos else seq.eos_ids
            lanes.append(run_ahead.Lane(seq.rid, seq.next_token, seq.greedy.choose, self._room(seq), ends))
        backend = self._loaded()
        done = await self._forward(
            seqs, run_ahead.run, self.clock.timed(backend.decode), lanes, self._interrupt
        )
        if done is None:
            return
        for seq, lane in zip(seqs, lanes, strict=True):
            seq.fed.extend(lane.fed)  # in its KV whatever happens next
            if await self._ended_during_forward(seq):
                continue
            await self._take_tokens(seq, lane.chosen)

    async def _decode_with_chunk(self, plan: planner.DecodeWithChunk) -> None:
        """A decode step carrying the next chunk of a long prompt. The chunk is sized so
        that what it adds to the step is about one step (measured): the streams then
        wait about two steps a token while the prompt goes in."""
        assert self._chunks is not None
        seqs, rider = list(plan.seqs), plan.rider
        for seq in seqs:
            seq.fed.append(seq.next_token)
        piece = rider.prompt_ids[rider.prefilled : plan.end]
        self.clock.interrupted()  # longer than a decode step: not one for the clock
        start = time.monotonic_ns()
        result = await self._forward(
            [*seqs, rider], self._loaded().decode_and_extend,
            [s.rid for s in seqs], [s.next_token for s in seqs], rider.rid, piece,
        )
        if result is None:
            return
        spent = ms(time.monotonic_ns() - start)
        if plan.step_ms:
            self._chunks.observe(len(piece), max(spent - plan.step_ms, spent * 0.05))
        logits, chunk_logits = result
        rider.timings.prefill_ms += spent
        await self._prompt_fed(rider, plan.end, chunk_logits)
        await self._decoded(seqs, logits)

    async def _decoded(self, seqs: list[DeviceSequence], logits: Any) -> None:
        for seq, row in zip(seqs, logits, strict=True):
            if await self._ended_during_forward(seq):
                continue
            await self._choose_next(seq, row, first=False)

    async def _ended_during_forward(self, seq: DeviceSequence) -> bool:
        if seq.pending_end is not None:
            await self._end(seq, seq.pending_end)
            return True
        return False

    async def on_close(self) -> None:
        self._model.idle.stop()
        self.burst.ended()
        if self._stepper is not None:
            self._stepper.cancel()
            await asyncio.wait([self._stepper])  # waits without swallowing our own cancel
        await self._model.close()
        self._thread.shutdown()
