"""The device's part in constrained decoding: each constrained sequence's matcher,
compiled while its prompt is prefilled, and its masks filled off the event loop, a
step's rows together, with the masks after each token a greedy stream proposed
(grammar_drafts.py); a run of greedy steps fills them on the device thread instead
(run_ahead.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from axchat.actors import messages as m
from axchat.actors.device.sequence import DeviceSequence
from axchat.actors.token_mask import ConstraintVocab, TokenMask, compile_matcher, fill_together
from axchat.protocol.v1 import FinishReason

log = logging.getLogger(__name__)


class Constraints:
    def __init__(self, vocab: ConstraintVocab | None) -> None:
        self._vocab = vocab
        # Compiles apart from masks: a slow compile never holds up a step's masks.
        self._compile = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axchat-grammar")
        self._masks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axchat-masks")
        self._compiling: dict[int, asyncio.Future[TokenMask]] = {}
        self._deferred: set[asyncio.Task[None]] = set()

    def admit(self, seq: DeviceSequence, grammar_text: str) -> None:
        """Start compiling `seq`'s matcher; it runs while the prompt waits and prefills."""
        vocab = self._vocab
        if not grammar_text or vocab is None:
            return

        def build() -> TokenMask:
            mask = TokenMask(compile_matcher(vocab, grammar_text), vocab.get().vocab_size)
            fill_together([mask])  # the first token's, in the same trip
            return mask

        self._compiling[seq.rid] = asyncio.get_running_loop().run_in_executor(self._compile, build)

    def compiling(self, seq: DeviceSequence) -> bool:
        """Its matcher is still being compiled (its prompt went in faster)."""
        future = self._compiling.get(seq.rid)
        return future is not None and not future.done()

    def after_compile(
        self,
        seq: DeviceSequence,
        row: Any,
        choose: Callable[[DeviceSequence, Any, bool], Awaitable[None]],
        end: Callable[[DeviceSequence, FinishReason, m.Failure], Awaitable[None]],
    ) -> None:
        """Choose `seq`'s first token from `row` (a copy) once its matcher is compiled;
        the step loop goes on with the other streams meanwhile."""
        future = self._compiling[seq.rid]

        async def resume() -> None:
            try:
                await asyncio.wait([future])
                future.result()
            except Exception as exc:  # compiled once by the check already: not expected
                await end(seq, "error", m.Failure(code="internal", message=f"compiling the constraint failed: {exc}"))
                return
            if self._compiling.get(seq.rid) is future:  # not ended meanwhile (ending forgets it)
                await choose(seq, row, True)

        task = asyncio.get_running_loop().create_task(resume(), name=f"first-choice-{seq.rid}")
        self._deferred.add(task)
        task.add_done_callback(self._deferred_done)

    def _deferred_done(self, task: asyncio.Task[None]) -> None:
        self._deferred.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a constrained first token failed", exc_info=task.exception())

    async def ready(self, seq: DeviceSequence) -> TokenMask | None:
        """`seq`'s mask for its first token, filled; None when it has no constraint."""
        future = self._compiling.pop(seq.rid, None)
        if future is None:
            return seq.mask
        seq.mask = await future
        await self.fill([seq])
        return seq.mask

    async def fill(self, seqs: Sequence[DeviceSequence]) -> None:
        # An ending stream chooses nothing more, unless the step verified its proposal
        # (its kept tokens are still fed and counted, as a free stream's are).
        masks = [s.mask for s in seqs if s.mask is not None and not s.mask.filled and (s.pending_end is None or s.mask.ahead)]
        if masks:
            await asyncio.get_running_loop().run_in_executor(self._masks, fill_together, masks)

    def forget(self, rid: int) -> None:
        self._compiling.pop(rid, None)  # its compile finishes unwatched

    def close(self) -> None:
        for task in self._deferred:
            task.cancel()
        self._compile.shutdown(wait=False, cancel_futures=True)
        self._masks.shutdown(wait=False, cancel_futures=True)


def dead_end(seq: DeviceSequence) -> m.Failure | None:
    """Why `seq`'s grammar cannot go on, once its last chosen token proved it."""
    if seq.mask is None or seq.mask.failed is None:
        return None
    return m.Failure(code="constraint_failed", message=f"the reply cannot continue its constraint: {seq.mask.failed}")
