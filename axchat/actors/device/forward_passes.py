"""The device actor's forward passes: each plan the planner makes, run on the device
thread, and what it fed and returned put back on the sequences. A mixin of
`DeviceActor` (actor.py), which owns the sequences and decides how each turn ends."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from axchat.actors import messages as m
from axchat.actors.backends.base import DeviceBackend
from axchat.actors.device import kv_room, planner, run_ahead
from axchat.actors.device.clock import DecodeClock, PrefillRate
from axchat.actors.device.constrained import Constraints
from axchat.actors.device.device_thread import BackendReadings, DeviceThread
from axchat.actors.device.drafts import ModelProposals, Speculation, proposals, step_lengths, verify
from axchat.actors.device.fair_queue import FairQueue
from axchat.actors.device.prompt_chunks import ChunkSizer
from axchat.actors.device.sequence import DeviceSequence, SeqState, ms
from axchat.protocol.v1 import FinishReason

log = logging.getLogger(__name__)


class ForwardPasses:
    """Runs plans; the actor supplies the state and the turn's bookkeeping below."""

    _thread: DeviceThread
    _running: dict[int, DeviceSequence]
    _waiting: FairQueue[DeviceSequence]
    _chunks: ChunkSizer | None
    _interrupt: threading.Event
    constraints: Constraints
    clock: DecodeClock
    prefill_rate: PrefillRate
    _limits: planner.StepLimits
    _speculate: str | None  # "ngram", "draft" (the backend's draft model guesses) or None
    _pool: int | None  # the backend's KV cells, when its sequences share a pool

    if TYPE_CHECKING:

        @property
        def backend(self) -> DeviceBackend | None: ...
        async def _end(self, seq: DeviceSequence, reason: FinishReason, error: m.Failure | None = None) -> None: ...
        async def _choose_next(self, seq: DeviceSequence, logits: Any, first: bool) -> None: ...
        async def _take_tokens(self, seq: DeviceSequence, tokens: list[int], following: bool = False) -> None: ...
        async def _publish(self, readings: BackendReadings) -> None: ...
        def _room(self, seq: DeviceSequence) -> int: ...

    async def _run(self, plan: planner.Forward) -> None:
        if isinstance(plan, planner.PrefillGroup):
            await self._prefill_together(list(plan.seqs))
        elif isinstance(plan, planner.PrefillPiece):
            await self._prefill_piece(plan)
        elif isinstance(plan, planner.Decode):
            if self._pool is not None and await self._room_for(plan):
                return  # some left the step to make room for it: the next plan says who goes
            await self._decode(list(plan.seqs))
        else:
            await self._decode_with_prompts(plan)


    def _loaded(self) -> DeviceBackend:
        # Steps run only while LOADED (the step loop checks), and unloading waits for idle.
        backend = self.backend
        assert backend is not None, "a step ran while the model was unloaded"
        return backend

    async def _forward(self, seqs: list[DeviceSequence], fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the device thread; None when it failed (the sequences are ended)."""
        return await self._outcome(seqs, self._submit(seqs, fn, *args))

    def _submit(self, seqs: list[DeviceSequence], fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue `fn` on the device thread for `seqs` (COMPUTING until `_outcome`)."""
        for seq in seqs:
            seq.state = SeqState.COMPUTING
        return self._thread.submit(fn, *args)

    async def _outcome(self, seqs: list[DeviceSequence], future: asyncio.Future[Any]) -> Any:
        """`_submit`'s result; None when it failed (the sequences are ended)."""
        try:
            result = await future
        except Exception as exc:
            log.exception("forward pass failed for requests %s", [s.label for s in seqs])
            for seq in seqs:
                await self._end(seq, "error", m.Failure(code="internal", message=f"device error: {exc}"))
            return None
        await self._publish(self._thread.readings)
        return result

    # ------------------------------------------------------------ the KV pool (kv_room.py)

    def _movable(self) -> list[DeviceSequence]:
        """The running sequences that can take part in a step now (all of them, without a
        shared pool)."""
        running = list(self._running.values())
        return running if self._pool is None else kv_room.visible(running, self._pool)

    async def _fit_pool(self) -> bool:
        """Bring back parked streams that fit, and unblock prompt readers that hold each
        other's cells; True when anything changed."""
        assert self._pool is not None
        running = list(self._running.values())
        backend = self._loaded()
        changed = False
        for seq in kv_room.returning(running, self._pool):
            back = await self._forward([seq], backend.unpark, seq.rid)
            if seq.rid not in self._running or await self._ended_during_forward(seq):
                continue
            seq.state = SeqState.READY if back else SeqState.PARKED
            if not back:
                break  # no run of free cells for it yet (a sequence's state goes back whole)
            changed = True
        for seq in kv_room.unblock(running, self._pool):
            await self._put_back(seq)
            changed = True
        return changed

    async def _room_for(self, plan: planner.Decode) -> bool:
        """Make room for `plan`'s step where the pool lacks it; True when anything moved."""
        assert self._pool is not None
        making = kv_room.make_room(list(self._running.values()), self._pool, plan.seqs)
        for seq in making.restart:
            await self._put_back(seq)
        backend = self._loaded()
        for seq in making.park:
            await self._forward([seq], backend.park, seq.rid)
            if seq.rid in self._running and not await self._ended_during_forward(seq):
                seq.state = SeqState.PARKED
                log.info("KV pool full: request %s parked until an older one ends", seq.label)
        return bool(making)

    async def _put_back(self, seq: DeviceSequence) -> None:
        """A part-fed prompt gives its cells back; it is fed again from the start later."""
        await self._thread.run(self._loaded().release, seq.rid, None)
        seq.started, seq.prefilled, seq.cached_tokens = False, 0, 0
        log.info("KV pool full: request %s reads its prompt again later", seq.label)

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
        if planner.may_run_ahead(seqs, running=len(self._movable()), waiting=len(self._waiting)):
            await self._decode_run(seqs)
            return
        # Proposals only where nobody else needs the device: no prompt going in, nobody
        # waiting (their rows come first).
        others = bool(self._waiting) or any(s.state is SeqState.PREFILL for s in self._running.values())
        lengths = step_lengths(
            [(s.spec, self._room(s)) for s in seqs],
            row_budget=self._limits.max_batch,
            others_waiting=others,
            cost=self.clock.rows.cost,
        )
        if any(lengths):
            drafts = await self._proposals(seqs, lengths)
            if drafts is None:
                return
            if any(drafts):
                await self._decode_drafts(seqs, drafts)
                return
        # Timed per call, not wrapped once: a kept bound method would hold the backend
        # (and so an unloaded model) alive.
        logits = await self._forward(
            seqs, self.clock.timed(self._loaded().decode), [s.rid for s in seqs], [s.next_token for s in seqs]
        )
        if logits is not None:
            await self._decoded(seqs, logits)

    def _model_proposals(self) -> ModelProposals | None:
        """The draft model's guessing, timed as part of the step it proposes for; None
        without a draft model. Made per step: a kept bound method would hold the backend."""
        return self.clock.drafting(self._loaded().propose) if self._speculate == "draft" else None

    async def _proposals(self, seqs: list[DeviceSequence], lengths: list[int]) -> list[list[int]] | None:
        """Each stream's proposal of at most `lengths[i]` tokens: a draft model's on the
        device thread (None when that failed: the streams are ended), else at once here."""
        specs: list[Speculation | None] = [s.spec for s in seqs]
        model = self._model_proposals()
        if model is None:
            return proposals(specs, lengths)
        drafts: list[list[int]] | None = await self._forward(seqs, proposals, specs, lengths, model)
        return drafts

    async def _decode_drafts(self, seqs: list[DeviceSequence], drafts: list[list[int]]) -> None:
        """A decode step verifying the greedy streams' proposals (drafts.py) beside the
        others' plain rows."""
        backend = self._loaded()
        rows = await self._forward(
            seqs, self.clock.timed(backend.decode_drafts), [s.rid for s in seqs], [s.next_token for s in seqs], drafts
        )
        if rows is None:
            return
        await self.constraints.fill(seqs)  # with the masks after each constrained proposal
        for seq, seq_rows, proposed in zip(seqs, rows, drafts, strict=True):
            draft = proposed[: len(seq_rows) - 1]  # what the backend had room to verify
            if not draft:
                if not await self._ended_during_forward(seq):
                    await self._choose_next(seq, seq_rows[0], first=False)
                continue
            assert seq.greedy is not None and seq.spec is not None  # only greedy streams propose
            chosen = verify(seq.greedy.choose, seq_rows, draft, produced=0, ends=seq.end_ids, room=self._room(seq))
            seq.spec.settle(draft, chosen)
            if len(draft) >= len(chosen):  # queued before any later forward or release
                self._thread.spawn(backend.trim, seq.rid, len(draft) + 1 - len(chosen))
            seq.fed.extend(chosen[:-1])
            if not await self._ended_during_forward(seq):
                await self._take_tokens(seq, chosen)

    async def _decode_run(self, seqs: list[DeviceSequence]) -> None:
        """Decode steps on the device thread until a bound (run_ahead.py); then each
        stream's tokens are taken in one pass, as one step's would be. When the run ended
        only for its time and nothing else wants the device, the next run is queued
        before those tokens are taken (`_follow_on`): the engine then decodes while the
        loop sends them, where it would otherwise wait for the loop (about 5% of a
        one-stream decode on 2 cores)."""
        self._interrupt.clear()  # on the loop, where anything arriving later sets it
        lanes = []
        for seq in seqs:
            assert seq.greedy is not None
            lanes.append(
                run_ahead.Lane(seq.rid, seq.next_token, seq.greedy.choose, self._room(seq), seq.end_ids, seq.mask, seq.spec)
            )
        future = self._submit_run(seqs, lanes)
        while True:
            if await self._outcome(seqs, future) is None:
                return
            for seq, lane in zip(seqs, lanes, strict=True):
                seq.fed.extend(lane.fed)  # in its KV whatever happens next
            follow = self._follow_on(seqs, lanes)
            if follow is not None:
                for seq, lane in zip(seqs, follow, strict=True):
                    seq.fed.append(lane.token)
                future = self._submit_run(seqs, follow)
            for seq, lane in zip(seqs, lanes, strict=True):
                if follow is None:
                    if not await self._ended_during_forward(seq):
                        await self._take_tokens(seq, lane.chosen)
                elif seq.pending_end is None:
                    # A run in flight holds it: an end found now waits for that run
                    # (pending_end), so that its KV and `fed` agree when it is released.
                    await self._take_tokens(seq, lane.chosen, following=True)
            if follow is None:
                return
            lanes = follow

    def _submit_run(self, seqs: list[DeviceSequence], lanes: list[run_ahead.Lane]) -> asyncio.Future[Any]:
        backend = self._loaded()
        speculating = any(lane.spec is not None for lane in lanes)
        decode = backend.decode_drafts if speculating else run_ahead.without_drafts(backend.decode)
        trim = backend.trim if speculating else None
        cells = None if self._pool is None else kv_room.free(self._pool, list(self._running.values()))
        return self._submit(
            seqs, run_ahead.run, self.clock.timed(decode), lanes, self._interrupt, None, trim, self._limits.max_batch,
            self.clock.rows.cost, self._model_proposals() if speculating else None, cells,
        )  # fmt: skip

    def _follow_on(self, seqs: list[DeviceSequence], lanes: list[run_ahead.Lane]) -> list[run_ahead.Lane] | None:
        """The next run's lanes when the run just done may go straight on: it stopped for
        its time alone (every lane still going, nothing arrived: `may_run_ahead` holds
        as it did), no stream is ending or constrained, nobody is parked, and the pool
        has a cell for each; else None (the planner decides the next step)."""
        if self._interrupt.is_set() or len(self._movable()) != len(self._running):
            return None
        if not planner.may_run_ahead(seqs, running=len(self._running), waiting=len(self._waiting)):
            return None
        if any(lane.ended or lane.mask is not None or seq.stop_at is not None for seq, lane in zip(seqs, lanes, strict=True)):
            return None
        if self._pool is not None and kv_room.free(self._pool, list(self._running.values())) < len(seqs):
            return None
        return [
            run_ahead.Lane(lane.rid, lane.chosen[-1], lane.choose, lane.room - len(lane.chosen), lane.ends, None, lane.spec)
            for lane in lanes
        ]

    async def _decode_with_prompts(self, plan: planner.DecodeWithPrompts) -> None:
        """A decode step carrying newcomers' short prompts whole, or the next chunk of a
        long prompt. A chunk is sized so that what it adds to the step is about one step
        (measured): the streams then wait about two steps a token while the prompt goes in."""
        assert self._chunks is not None
        seqs, riders = list(plan.seqs), list(plan.riders)
        for seq in seqs:
            seq.fed.append(seq.next_token)
        pieces = [r.prompt_ids[r.prefilled : end] for r, end in zip(riders, plan.ends, strict=True)]
        self.clock.interrupted()  # longer than a decode step: not one for the clock
        start = time.monotonic_ns()
        result = await self._forward(
            [*seqs, *riders], self._loaded().decode_and_extend,
            [s.rid for s in seqs], [s.next_token for s in seqs], [r.rid for r in riders], pieces,
        )
        if result is None:
            return
        spent = ms(time.monotonic_ns() - start)
        if plan.step_ms:
            self._chunks.observe(sum(map(len, pieces)), max(spent - plan.step_ms, spent * 0.05))
        logits, prompt_logits = result
        for rider, end, row in zip(riders, plan.ends, prompt_logits, strict=True):
            rider.timings.prefill_ms += spent
            await self._prompt_fed(rider, end, row)
        await self._decoded(seqs, logits)

    async def _decoded(self, seqs: list[DeviceSequence], logits: Any) -> None:
        await self.constraints.fill(seqs)  # the step's masks together, off the loop
        for seq, row in zip(seqs, logits, strict=True):
            if await self._ended_during_forward(seq):
                continue
            await self._choose_next(seq, row, first=False)

    async def _ended_during_forward(self, seq: DeviceSequence) -> bool:
        if seq.pending_end is not None:
            await self._end(seq, seq.pending_end)
            return True
        return False

