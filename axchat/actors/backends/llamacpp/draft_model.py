"""A draft model's proposals: a smaller model of the same vocabulary in a llama.cpp
context of its own (its own sequences and KV cells), beside the model's in the same
process and on the same device thread. For the streams that speculate in a step it
guesses each one's next tokens greedily, all streams together: one small `llama_decode`
per guessed token.

Each stream's draft KV follows the tokens the stream chose: its prompt as the model is
fed it (`follow`), then its reply: before guessing, the cells past the longest prefix
that still agrees with them (guesses the model rejected) are dropped and the rest is
fed, so a stream that did not speculate for a while catches up in the same call."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from axchat.actors.backends.llamacpp.engine import Engine, NoKvRoom

# Reply tokens one catching-up forward feeds: no more than a decode step verifying the
# longest proposal does (speculation_plan.MAX_DRAFT + 1), so that they are computed by
# the kernels that computed them in the model.
REPLY_ROWS = 9


class DraftModel:
    def __init__(self, engine: Engine, max_sequences: int) -> None:
        self.engine = engine
        self._free_ids = list(range(max_sequences))[::-1]  # popped from the end: 0 first
        self._seq: dict[int, int] = {}  # request sequence -> the draft context's sequence id
        self._fed: dict[int, list[int]] = {}  # the tokens whose KV the draft holds, in order
        self._agreed: dict[int, int] = {}  # how many of those are the stream's own choices

    def propose(
        self, seq_ids: Sequence[int], histories: Sequence[Sequence[int]], prompt_lengths: Sequence[int], lengths: Sequence[int]
    ) -> list[list[int]]:
        """`lengths[i]` guesses for the tokens after `histories[i]` (all that sequence
        has chosen: its prompt, the first `prompt_lengths[i]` tokens, then its reply, its
        next token last). Fewer when the draft's cells run out: a step then verifies
        fewer proposals, never other tokens."""
        out: list[list[int]] = [[] for _ in seq_ids]
        live = [i for i, k in enumerate(lengths) if k > 0]
        try:
            rows = self._catch_up([seq_ids[i] for i in live], [histories[i] for i in live], [prompt_lengths[i] for i in live])
            for step in range(max((lengths[i] for i in live), default=0)):
                guesses = rows.argmax(axis=1)
                for i, guess in zip(live, guesses.tolist(), strict=True):
                    out[i].append(int(guess))
                live = [i for i in live if lengths[i] > step + 1]
                if not live:
                    break
                # The last guess is never fed: the model's verification decides what follows it.
                rows = self._feed([seq_ids[i] for i in live], [[out[i][-1]] for i in live])
        except NoKvRoom:
            pass  # what was guessed so far stands; the failed call left no cells behind
        return out

    def _catch_up(self, seq_ids: Sequence[int], histories: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> np.ndarray:
        """Each sequence's draft KV made to hold its history but the last token, which is
        fed to get the logits returned (a row each). Prompts go in a forward of their
        own and reply tokens at most REPLY_ROWS a forward, as the model fed them: llama.cpp
        computes long batches with other kernels, whose rounding alone changes many of a
        random-weight model's choices."""
        prompts: dict[int, list[int]] = {}
        replies: dict[int, list[int]] = {}
        for seq_id, history, prompt_length in zip(seq_ids, histories, prompt_lengths, strict=True):
            same = self._agree(seq_id, history)
            split = min(max(same, prompt_length), len(history) - 1)  # the last token's logits are wanted
            prompts[seq_id] = list(history[same:split])
            replies[seq_id] = list(history[split:])
        if any(prompts.values()):
            self._feed([s for s in seq_ids if prompts[s]], [prompts[s] for s in seq_ids if prompts[s]])
        rows: dict[int, np.ndarray] = {}
        while any(replies.values()):
            now = [s for s in seq_ids if replies[s]]
            pieces = [replies[s][:REPLY_ROWS] for s in now]
            for seq_id, row in zip(now, self._feed(now, pieces), strict=True):
                rows[seq_id] = row
                del replies[seq_id][:REPLY_ROWS]
        return np.stack([rows[s] for s in seq_ids]) if seq_ids else np.empty((0, 0), dtype=np.float32)

    def follow(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]], starts: Sequence[int]) -> None:
        """The model was fed these prompt pieces at positions `starts`: the draft takes
        them too, in the same chunks and within the prompt's own forwards (whose measured
        time so includes them), rather than all at once in the step where a stream first
        proposes, which would hold every other stream of that step. A sequence whose
        draft is behind (its cells ran out once) catches up when it next proposes."""
        now = [(s, p) for s, p, at in zip(seq_ids, pieces, starts, strict=True) if p and len(self._fed_of(s)) == at]
        if now:
            with contextlib.suppress(NoKvRoom):  # the failed call left no cells; they catch up later
                self._feed([s for s, _ in now], [p for _, p in now], logits=False)

    def _fed_of(self, seq_id: int) -> list[int]:
        if seq_id not in self._seq:
            self._seq[seq_id] = self._free_ids.pop()
            self._fed[seq_id], self._agreed[seq_id] = [], 0
        return self._fed[seq_id]

    def _agree(self, seq_id: int, history: Sequence[int]) -> int:
        """Drop the draft cells past what agrees with `history` (and its last token,
        whose logits are wanted); return how many are kept."""
        fed = self._fed_of(seq_id)
        same = self._agreed[seq_id]
        most = min(len(fed), len(history) - 1)
        while same < most and fed[same] == history[same]:
            same += 1
        if same < len(fed):
            self.engine.forget(self._seq[seq_id], same)
            del fed[same:]
        self._agreed[seq_id] = same
        return same

    def _feed(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]], logits: bool = True) -> np.ndarray:
        """Each piece after its sequence's draft cells, in one batch; with `logits`, the
        logits after each piece."""
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        want: list[int] = []
        for seq_id, piece in zip(seq_ids, pieces, strict=True):
            start = len(self._fed[seq_id])
            tokens.extend(piece)
            positions.extend(range(start, start + len(piece)))
            seqs.extend([self._seq[seq_id]] * len(piece))
            if logits:
                want.append(len(tokens) - 1)
        try:
            rows = self.engine.run(tokens, positions, seqs, want)
        except NoKvRoom:
            for seq_id in seq_ids:
                self.engine.forget(self._seq[seq_id], len(self._fed[seq_id]))
            raise
        for seq_id, piece in zip(seq_ids, pieces, strict=True):
            self._fed[seq_id].extend(piece)
        return rows

    def release(self, seq_id: int) -> None:
        llama_seq = self._seq.pop(seq_id, None)
        if llama_seq is None:
            return
        del self._fed[seq_id], self._agreed[seq_id]
        self.engine.forget(llama_seq)
        self._free_ids.append(llama_seq)

    def live_sequences(self) -> int:
        return len(self._seq)

    def close(self) -> None:
        self._seq.clear()
        self._fed.clear()
        self._agreed.clear()
        self.engine.close()
