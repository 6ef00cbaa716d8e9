"""Device actor: owns the backend (through its residency) and every sequence's KV; asks
the planner for each next step and runs it on the device thread while its mailbox keeps
answering. With keep-alive it also unloads the backend when idle and loads it again, on
that same thread, when the next request comes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from axchat.actors import messages as m
from axchat.actors.backends.base import DeviceBackend
from axchat.actors.device import constrained, planner
from axchat.actors.device.burst import Burst
from axchat.actors.device.clock import DecodeClock, PrefillRate
from axchat.actors.device.constrained import Constraints
from axchat.actors.device.device_thread import BackendReadings, DeviceThread
from axchat.actors.device.forward_passes import ForwardPasses
from axchat.actors.device.greedy_choice import choose_chooser
from axchat.actors.device.peers import ONE_DEVICE, Peers
from axchat.actors.device.residency import BackendLoader, LoadProgress, Residency, ResidentModel
from axchat.actors.device.sequence import DeviceSequence, SeqState
from axchat.actors.device.turn_end import TurnEnd, end_of_turn
from axchat.actors.device.waiting_line import WaitingLine
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.status import DeviceSection
from axchat.actors.token_mask import ConstraintVocab
from axchat.protocol.v1 import FinishReason


class DeviceActor(ForwardPasses, Actor):
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
        vocab: ConstraintVocab | None = None,
        speculate: str = "off",
    ) -> None:
        self.name = name  # before the inbox is bound under it
        super().__init__(bus, supervisor)
        self._peers = peers
        # Fixed at load (a reload loads the same model with the same options), so read
        # once here rather than from a backend that may be unloaded later.
        self._limits = planner.StepLimits.of(backend.capabilities)
        self._context_length = backend.info.context_length
        self._pool = backend.capabilities.kv_cells  # None: no shared pool to fit (kv_room.py)
        # Greedy streams propose tokens (drafts.py) where the engine can verify them (and
        # with a draft model only where it loaded one).
        usable = backend.capabilities.drafts and (speculate != "draft" or backend.capabilities.draft_model)
        self._speculate: str | None = speculate if speculate != "off" and usable else None
        self.max_running = self._limits.running_limit(max_running)
        self._chunks = self._limits.chunk_sizer()
        self._gone_connections: set[str] = set()  # disconnected, with sequences still ending
        # The one thread that touches the device, for the life of the daemon.
        self._thread = DeviceThread(lambda: self.backend, name=f"axchat-{name}")
        self._sent_temperature: float | None = None
        self._waiting: WaitingLine[DeviceSequence] = WaitingLine(
            self._tell_position, may_announce=lambda: self.residency is Residency.LOADED
        )
        self._running: dict[int, DeviceSequence] = {}
        self._wake = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None
        self._decode_next = False  # alternates prefill work with decode steps
        # Set by anything that arrives for the device: a run ends at its next step (run_ahead.py).
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
        self.constraints = Constraints(vocab)

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
            self.constraints.admit(seq, msg.grammar)
            self.burst.admitted(msg.more_coming)
            self._model.idle.stop()
            self._waiting.push(seq)
            if self.residency is not Residency.LOADED:
                await self._need_model(seq)
            elif len(self._running) >= self.max_running:
                await self._waiting.announce()  # it waits: say where it stands
            self._wake.set()
        elif isinstance(msg, m.Sampled):
            await self._sampled(msg)
        elif isinstance(msg, m.CancelRequest):
            await self._stop(msg.rid, cancel=msg.reason)
        elif isinstance(msg, m.StopSequence):
            await self._stop(msg.rid, stop_at=msg.completion_tokens)
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
        section = DeviceSection(
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
        await self.send(self._peers.status, msgspec.structs.replace(query, device=section))

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
        if seq.mask is not None:
            seq.mask.consume(msg.token_id)
        await self._take_tokens(seq, [msg.token_id])

    async def _choose_next(self, seq: DeviceSequence, logits: Any, first: bool) -> None:
        """Hand a row of logits on for the next token (greedy_choice.py: who picks it)."""
        seq.state = SeqState.SAMPLING
        if first and self.constraints.compiling(seq):  # a copy: the device reuses its rows
            seq.state = SeqState.GRAMMAR
            self.constraints.after_compile(seq, np.array(logits, dtype=np.float32), self._choose_next, self._end)
            return
        if first:
            choose_chooser(seq, await self.constraints.ready(seq), self._speculate)
        if seq.greedy is not None:
            token = seq.greedy.choose(logits)
            if seq.spec is not None:
                seq.spec.settle((), (token,))
            await self._take_tokens(seq, [token])
            return
        if seq.mask is not None:
            logits = seq.mask.allowed(logits)  # the sampler draws among what the grammar allows
        if first:
            sampling, context = seq.sampling, seq.prompt_ids
            row = m.Logits(rid=seq.rid, data=logits.tobytes(), sampling=sampling, context_ids=context, reply_to=self.name)
            await self.send(self._peers.sampler, row)
        else:
            await self.send(self._peers.sampler, m.Logits(rid=seq.rid, data=logits.tobytes()))

    async def _take_tokens(self, seq: DeviceSequence, tokens: list[int], following: bool = False) -> None:
        """`seq`'s next tokens, in order: emitted in one message up to where its turn
        ends, if it ends among them. `following`: a run already queued goes on with it
        (forward_passes `_follow_on`): it stays COMPUTING, and an end waits for that run."""
        now = time.monotonic_ns()
        if seq.completion_tokens == 0:
            seq.timings.first_token_ns = now
        seq.timings.last_token_ns = now
        dead_end = constrained.dead_end(seq)
        if dead_end is not None:
            tokens = tokens[:-1]  # the last was chosen from a row the grammar allowed nothing in
        turn = self._turn(seq, tokens)
        seq.completion_tokens = turn.completion_tokens
        if turn.kept:
            await self._emit(seq, tokens[: turn.kept])
        if following:
            assert dead_end is None, "constrained streams do not follow on"
            seq.next_token = tokens[-1]
            if turn.reason is not None:
                seq.pending_end = turn.reason
        elif dead_end is not None and turn.reason is None:
            await self._end(seq, "error", dead_end)
        elif turn.reason is not None:
            await self._end(seq, turn.reason)
        else:
            seq.next_token = tokens[-1]
            seq.state = SeqState.READY
            self._wake.set()

    def _turn(self, seq: DeviceSequence, tokens: Sequence[int] = (), cancel: FinishReason | None = None) -> TurnEnd:
        return end_of_turn(
            seq.completion_tokens, tokens, ends=seq.end_ids, limit=self._limit(seq), stop_at=seq.stop_at, cancel=cancel
        )

    def _limit(self, seq: DeviceSequence) -> int:
        """The most tokens `seq`'s reply may have: its max_tokens, or the context's end."""
        return min(seq.sampling.max_tokens, self._context_length - len(seq.prompt_ids))

    def _room(self, seq: DeviceSequence) -> int:
        """Tokens `seq` may still produce."""
        return self._limit(seq) - seq.completion_tokens

    async def _emit(self, seq: DeviceSequence, tokens: list[int]) -> None:
        """The one place generated tokens leave the device (for the tokenizer)."""
        await self.send(self._peers.tokenizer, m.TokenOut(rid=seq.rid, token_ids=tokens))

    async def _stop(self, rid: int, *, cancel: FinishReason | None = None, stop_at: int | None = None) -> None:
        """A cancel, or a stop string the tokenizer found in the first `stop_at` tokens
        of the reply (the device has usually made more by then)."""
        # A waiter has made no tokens, so a stop string cannot be what ends it.
        if await self._waiting.stop(rid, lambda seq: self._end(seq, cancel or "stop")):
            return
        seq = self._running.get(rid)
        if seq is None:
            return
        seq.stop_at = stop_at if stop_at is not None else seq.stop_at
        turn = self._turn(seq, cancel=cancel)
        if turn.reason is None:
            return  # a stop string in tokens it has yet to make: it ends when it takes them
        seq.completion_tokens = turn.completion_tokens
        if seq.state is SeqState.COMPUTING:
            seq.pending_end = turn.reason
        else:
            await self._end(seq, turn.reason)

    async def _end(self, seq: DeviceSequence, reason: FinishReason, error: m.Failure | None = None) -> None:
        self._running.pop(seq.rid, None)
        self.constraints.forget(seq.rid)
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
                await self._waiting.announce()
            if await self._step():
                self._wake.set()  # more may be runnable

    def _admit(self) -> bool:
        chosen = planner.admissions(self._waiting.in_order(), len(self._running), self.max_running)
        for expected in chosen:
            seq = self._waiting.leave()
            assert seq is expected, "the planner admits in the fair queue's order"
            seq.state = SeqState.PREFILL
            self._running[seq.rid] = seq
        return bool(chosen)

    def _plan(self) -> planner.Plan | None:
        return planner.next_step(
            self._movable(),
            self._limits,
            decode_next=self._decode_next,
            recent_step_ms=self.clock.recent_step_ms(),
            chunks=self._chunks,
            arrivals=self.burst.arrivals(self.prefill_rate.ms_per_token(), self.max_running, len(self._waiting)),
        )

    async def _step(self) -> bool:
        """Run the planner's next step; False when nothing could run."""
        restored = self._pool is not None and await self._fit_pool()
        plan = self._plan()
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
            self.clock.interrupted()  # not a decode step: not one for the clock
        self._decode_next = planner.decode_next_after(plan, self._decode_next)
        await self._run(plan)
        return True

    async def _tell_position(self, rid: int, position: int) -> None:
        await self.send(self._peers.tokenizer, m.QueuePosition(rid=rid, position=position))

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

    async def on_close(self) -> None:
        self._model.idle.stop()
        self.burst.ended()
        if self._stepper is not None:
            self._stepper.cancel()
            await asyncio.wait([self._stepper])  # waits without swallowing our own cancel
        await self._model.close()
        self._thread.shutdown()
        self.constraints.close()
