"""Proposed tokens for a greedy stream, and their verification: a drafter guesses the
next few tokens, the decode step feeds them after the stream's next token (a row each,
with logits), and the stream keeps its own choices while they agree with the guesses.
Each kept token is the one the stream would have chosen without the guess, so greedy
output is unchanged; the rejected guesses' KV is dropped (`backend.trim`).

Drafters: `NgramDrafter` (prompt lookup: the tokens that followed the latest earlier
occurrence of the stream's last few tokens, in its prompt or its reply), `ModelDrafter`
(a draft model's guesses, made by the backend for every stream of a step at once) and,
for tests and benchmarks only, `OracleDrafter` (a known reply, partly corrupted), chosen
through `$AXCHAT_TEST_ORACLE_DRAFTS`, never through the protocol."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from axchat.actors.device.speculation_plan import NEVER_TRIED, StepCost, StreamOutlook, draft_lengths, flat_rows
from axchat.actors.device.turn_end import end_of_turn

# Test and benchmark hook: a JSON file {"reply": [token ids], "corrupt": p, "seed": s}
# read when a greedy stream starts; its proposals are then the reply's next tokens,
# a fraction p of them (fixed by the seed) replaced by a wrong token.
ORACLE_ENV = "AXCHAT_TEST_ORACLE_DRAFTS"

# Longest and shortest tails looked up by the n-gram drafter: a longer match is likelier
# to continue the same way; a single token matches too much to be worth a row.
NGRAM_MAX = 3
NGRAM_MIN = 2
# Acceptance estimate: recent steps weigh most (a reply moves between copied and new
# text); a new stream starts at one right guess in two.
DECAY = 0.8
PRIOR_HITS, PRIOR_TRIALS = 1.0, 2.0


class Drafter(Protocol):
    def accept(self, tokens: Sequence[int]) -> None:
        """The stream chose `tokens` next."""

    def propose(self, k: int) -> list[int]:
        """Up to `k` guesses for the tokens after those chosen so far."""


class NgramDrafter:
    """Prompt lookup: each n-gram of the stream's history (prompt and reply) is indexed
    by where it last ended; a proposal is what followed the latest earlier occurrence of
    the history's last n tokens, longest n first."""

    def __init__(self, prompt: Sequence[int]) -> None:
        self._history = list(prompt)
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(NGRAM_MIN, NGRAM_MAX + 1)}
        self._indexed = 0  # n-grams ending before this position are in the index

    def accept(self, tokens: Sequence[int]) -> None:
        self._history.extend(tokens)

    def propose(self, k: int) -> list[int]:
        return self.propose_after((), k)

    def propose_after(self, extra: Sequence[int], k: int) -> list[int]:
        """Up to `k` guesses for the tokens after those chosen so far and then `extra`."""
        if k <= 0:
            return []
        h = self._history
        # Index every n-gram but the last one (it would match itself); lazily, so a long
        # prompt is indexed once, on the first proposal, not per token.
        for end in range(self._indexed, len(h) - 1):
            for n, index in self._index.items():
                if end + 1 >= n:
                    index[tuple(h[end + 1 - n : end + 1])] = end + 1
        self._indexed = max(self._indexed, len(h) - 1)
        tail = [*h[-NGRAM_MAX:], *extra][-NGRAM_MAX:]
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            at = self._index[n].get(tuple(tail[-n:])) if len(tail) >= n else None
            if at is not None:
                return h[at : at + k]
        return []


class OracleDrafter:
    """Test and benchmark drafter: the reply of an earlier greedy run of the same
    request, with the positions in `corrupt` proposed wrong."""

    def __init__(self, reply: Sequence[int], corrupt: frozenset[int]) -> None:
        self._reply = list(reply)
        self._corrupt = corrupt
        self._made = 0  # reply tokens chosen so far

    def accept(self, tokens: Sequence[int]) -> None:
        self._made += len(tokens)

    def propose(self, k: int) -> list[int]:
        return self.propose_after((), k)

    def propose_after(self, extra: Sequence[int], k: int) -> list[int]:
        at = self._made + len(extra)
        # Another id that surely exists in the vocabulary: one below, or above id 0.
        return [(t - 1 if t else 1) if at + i in self._corrupt else t for i, t in enumerate(self._reply[at : at + k])]

    @classmethod
    def from_file(cls, path: str) -> OracleDrafter:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        reply = [int(t) for t in spec["reply"]]
        pick = random.Random(int(spec.get("seed", 0)))
        share = float(spec.get("corrupt", 0.0))
        return cls(reply, frozenset(pick.sample(range(len(reply)), round(share * len(reply)))))


class ModelDrafter:
    """A stream whose guesses a draft model makes: the backend's `propose`, for all such
    streams of a step in one batch (`proposals`). Keeps what the draft model reads:
    every token the stream chose, its prompt first."""

    def __init__(self, rid: int, prompt: Sequence[int]) -> None:
        self.rid = rid
        self.history = list(prompt)
        self.prompt_length = len(prompt)

    def accept(self, tokens: Sequence[int]) -> None:
        self.history.extend(tokens)


# The backend's `propose`: (sequence ids, their histories, their prompts' lengths, how
# many guesses each).
ModelProposals = Callable[[Sequence[int], Sequence[Sequence[int]], Sequence[int], Sequence[int]], list[list[int]]]


def drafter_for(prompt: Sequence[int]) -> Drafter:
    """The drafter of a greedy stream starting from `prompt` (with no draft model)."""
    oracle = os.environ.get(ORACLE_ENV)
    if oracle and os.path.exists(oracle):
        return OracleDrafter.from_file(oracle)
    return NgramDrafter(prompt)


@dataclass(eq=False)
class Speculation:
    """One greedy stream's proposals: its drafter, its recent acceptance, its totals.
    Touched by one side at a time: the device thread during a run ahead, else the loop."""

    drafter: Drafter | ModelDrafter
    proposed: int = 0  # proposed tokens verified, since the stream began
    accepted: int = 0  # of those, kept
    since_tried: int = NEVER_TRIED  # steps since it last had a proposal verified
    _hits: float = PRIOR_HITS
    _trials: float = PRIOR_TRIALS

    def outlook(self, room: int) -> StreamOutlook:
        """For the step's rule, with `room` tokens it may still make (the step's first
        token among them, so at most `room - 1` proposals)."""
        return StreamOutlook(self._hits / self._trials, max(room - 1, 0), self.since_tried)

    def draft(self, k: int) -> list[int]:
        """Its drafter's proposal (a draft model guesses for its streams together: `proposals`)."""
        assert not isinstance(self.drafter, ModelDrafter), "a draft model's stream proposed alone"
        return self.drafter.propose(k) if k > 0 else []

    def settle(self, draft: Sequence[int], chosen: Sequence[int], sure: int = 0) -> None:
        """The step verified `draft` and the stream chose `chosen`; the first `sure` of
        `draft` were no guesses (its grammar forced them): counted, but they tell
        nothing of the guesses' odds."""
        self.drafter.accept(chosen)
        kept = min(len(chosen) - 1, len(draft))
        self.proposed += len(draft)
        self.accepted += kept
        if len(draft) <= sure or kept < sure:  # no guess was tested
            self.since_tried += 1
            return
        self.since_tried = 0
        hits = kept - sure
        # Per-token odds: the kept guesses were hits; a rejection is one miss (the
        # guesses after it were never tested).
        self._hits = DECAY * self._hits + hits
        self._trials = DECAY * self._trials + hits + (1 if kept < len(draft) else 0)


def verify(
    choose: Callable[[Any], int], rows: Sequence[Any], draft: Sequence[int], *, produced: int, ends: frozenset[int], room: int
) -> list[int]:
    """The stream's choices from a step that fed its next token and then `draft`:
    `rows[i]` are the logits after the i-th token fed. Choices go on while they agree
    with the draft, and stop at the first token that ends the turn (`produced` tokens
    before the step's, `room` allowed in all, `ends` its end-of-turn ids), so that the
    tokens fed and kept are exactly those of a step without proposals."""
    chosen: list[int] = []
    for i, row in enumerate(rows):
        token = choose(row)
        chosen.append(token)
        if end_of_turn(produced + i, (token,), ends=ends, limit=room).reason is not None:
            break
        if i >= len(draft) or token != draft[i]:
            break
    return chosen


def step_lengths(
    streams: Sequence[tuple[Speculation | None, int]],
    *,
    row_budget: int,
    others_waiting: bool,
    cost: StepCost = flat_rows,
) -> list[int]:
    """How many tokens each stream may propose in the next decode step: `streams` are
    (its speculation, None when it does not speculate; the tokens it may still make), in
    step order; `cost` the step's measured cost by rows."""
    outlooks = [spec.outlook(room) if spec is not None else StreamOutlook(0.0, 0) for spec, room in streams]
    return draft_lengths(outlooks, row_budget=row_budget, others_waiting=others_waiting, cost=cost)


def proposals(
    specs: Sequence[Speculation | None], lengths: Sequence[int], model: ModelProposals | None = None
) -> list[list[int]]:
    """Each stream's proposed tokens, `lengths[i]` at most: from its own drafter, or
    with those of every other stream a draft model guesses for, in one call of `model`
    (on the device thread, which owns the draft model)."""
    out: list[list[int]] = [[] for _ in specs]
    batch: list[tuple[int, ModelDrafter]] = []
    for i, (spec, k) in enumerate(zip(specs, lengths, strict=True)):
        if spec is None or k <= 0:
            continue
        if isinstance(spec.drafter, ModelDrafter):
            batch.append((i, spec.drafter))
        else:
            out[i] = spec.draft(k)
    if batch:
        assert model is not None, "a draft model's stream in a step without the draft model"
        drafters = [d for _, d in batch]
        guessed = model(
            [d.rid for d in drafters], [d.history for d in drafters], [d.prompt_length for d in drafters], [lengths[i] for i, _ in batch]
        )
        for (i, _), guess in zip(batch, guessed, strict=True):
            out[i] = guess
    return out


def step_drafts(
    streams: Sequence[tuple[Speculation | None, int]],
    *,
    row_budget: int,
    others_waiting: bool,
    cost: StepCost = flat_rows,
    model: ModelProposals | None = None,
) -> list[list[int]]:
    """Each stream's proposal for the next decode step (`step_lengths`, `proposals`)."""
    lengths = step_lengths(streams, row_budget=row_budget, others_waiting=others_waiting, cost=cost)
    return proposals([spec for spec, _ in streams], lengths, model)
