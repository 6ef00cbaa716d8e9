"""How many proposed tokens each stream may have verified in the next decode step: the
one rule for speculation's share of a batch.

Verifying a proposed token is one more row in the step's `llama_decode`; on a CPU the
weights are read once for every row, so a row costs a fraction of a one-row step
(`ROW_COST`). A stream proposes the number of tokens that gives it the most tokens per
unit of step cost, judged from its recent acceptance, within the rows the batch has
spare: the step's rows beyond one per decoding stream, and none while anyone else needs
the device (a prompt going in, a request waiting for a slot). So a full batch never
speculates, one stream alone may take every spare row, and a speculating stream never
takes a row another stream needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The longest proposal one stream may have verified in a step.
MAX_DRAFT = 8
# A verified row's cost against a one-row decode step: the step's extra compute for it
# (activations and attention), the weights being read once for all rows. Rough for a
# small model on 2 CPU cores (bench/speculative.py); it only sets how much acceptance
# a longer proposal needs.
ROW_COST = 0.1
# A stream whose proposals were mostly wrong stops proposing; it tries one token again
# after this many steps, so that it notices when its text turns repetitive.
PROBE_EVERY = 16


@dataclass(frozen=True)
class StreamOutlook:
    """What the rule reads of one decoding stream."""

    acceptance: float  # the chance that its next proposed token is right, from recent steps
    most: int  # proposed tokens it could have verified now (its length limit, its drafter)
    idle_steps: int = 0  # steps since it last had a proposal verified


def best_length(acceptance: float, most: int, row_cost: float = ROW_COST) -> int:
    """The proposal length with the most expected tokens per unit of step cost: a step
    verifying k proposals, each right with chance `acceptance` given the ones before,
    yields 1 + a + ... + a^k tokens and costs 1 + k * row_cost."""
    a = min(max(acceptance, 0.0), 1.0)
    best_k, best_rate = 0, 1.0
    expected, term = 1.0, 1.0
    for k in range(1, max(most, 0) + 1):
        term *= a
        expected += term
        rate = expected / (1.0 + k * row_cost)
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k


def draft_lengths(
    streams: Sequence[StreamOutlook],
    *,
    row_budget: int,
    others_waiting: bool,
    max_draft: int = MAX_DRAFT,
    row_cost: float = ROW_COST,
) -> list[int]:
    """Proposed tokens each of `streams` (the step's decoding streams, in order) may have
    verified this step. `row_budget`: rows one step takes (the backend's batch);
    `others_waiting`: a prompt or a waiting request needs the device, so nobody
    speculates. Spare rows are dealt one at a time round the streams that want more,
    so none takes a second before each has had its first."""
    spare = row_budget - len(streams)
    if others_waiting or spare <= 0:
        return [0] * len(streams)
    wants = []
    for s in streams:
        most = min(s.most, max_draft)
        k = best_length(s.acceptance, most, row_cost)
        if k == 0 and most > 0 and s.idle_steps >= PROBE_EVERY:
            k = 1
        wants.append(k)
    given = [0] * len(streams)
    while spare > 0:
        dealt = False
        for i, want in enumerate(wants):
            if spare > 0 and given[i] < want:
                given[i] += 1
                spare -= 1
                dealt = True
        if not dealt:
            break
    return given
