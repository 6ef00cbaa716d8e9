"""How many proposed tokens each stream may have verified in the next decode step: the
one rule for speculation's share of a batch.

Verifying a proposed token is one more row in the step's `llama_decode`: the weights
are read once for all rows, but each row still costs compute, and on some CPUs
llama.cpp's kernels for several rows cost far more than its one-row kernel (on this
project's 2-core AVX-512 machine, 2 rows cost 2-3 one-row steps and 8 rows 3.7). So
each step's cost by its rows is measured as steps run (clock.RowCosts; a draft model's
guessing counts in the step it guessed for), and a stream
proposes the number of tokens that gives it the most tokens per unit of step cost,
judged from its recent acceptance, within the rows the batch has
spare: the step's rows beyond one per decoding stream, and none while anyone else needs
the device (a prompt going in, a request waiting for a slot). So a full batch never
speculates, one stream alone may take every spare row, and a speculating stream never
takes a row another stream needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# The longest proposal one stream may have verified in a step.
MAX_DRAFT = 8
# Before a step of some number of rows was timed, each row beyond those timed is taken
# to add this share of a one-row step (the weights are read once for all rows): an
# optimistic guess, so that the first proposals are tried and the real cost is learnt.
ROW_COST = 0.1
# A stream whose proposals were not worth their rows proposes again, to see whether
# its text has turned predictable, once the steps since its last try have paid for
# such a try this many times over (a try of 7 rows costing 2.7 steps more, measured
# on a 2-core CPU, comes every 135 steps); a new stream tries at once.
PROBE_SHARE = 0.02
# A proposal must promise this much more than a plain step's token per unit of cost:
# near break-even the gain is lost in the noise of the costs measured (a shared CPU's
# step times move by tens of percent), while the loss is real.
MARGIN = 0.15
NEVER_TRIED = 1 << 30

# A step's cost by the rows it feeds, against the cost of `base` rows: `cost(base, rows)`.
StepCost = Callable[[int, int], float]


def flat_rows(base: int, rows: int) -> float:
    """The guess before anything was timed: ROW_COST a row beyond `base`."""
    return 1.0 + ROW_COST * (rows - base) / max(base, 1)


@dataclass(frozen=True)
class StreamOutlook:
    """What the rule reads of one decoding stream."""

    acceptance: float  # the chance that its next proposed token is right, from recent steps
    most: int  # proposed tokens it could have verified now (its length limit, its drafter)
    since_tried: int = NEVER_TRIED  # steps since it last had a proposal verified
    sure: int = 0  # its first proposed tokens that are surely right (a grammar forces them)


def best_length(acceptance: float, most: int, cost: Callable[[int], float], sure: int = 0) -> int:
    """The proposal length with the most expected tokens per unit of step cost: a step
    verifying k proposals, each right with chance `acceptance` given the ones before,
    yields 1 + a + ... + a^k tokens and costs `cost(k)` (a step without proposals: 1);
    the first `sure` are right for certain. A length must beat the plain step by MARGIN."""
    a = min(max(acceptance, 0.0), 1.0)
    best_k, best_rate = 0, 1.0 + MARGIN
    expected, term = 1.0, 1.0
    for k in range(1, max(most, 0) + 1):
        term *= 1.0 if k <= sure else a
        expected += term
        rate = expected / cost(k)
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k


def draft_lengths(
    streams: Sequence[StreamOutlook],
    *,
    row_budget: int,
    others_waiting: bool,
    cost: StepCost = flat_rows,
    max_draft: int = MAX_DRAFT,
) -> list[int]:
    """Proposed tokens each of `streams` (the step's decoding streams, in order) may have
    verified this step. `row_budget`: rows one step takes (the backend's batch);
    `others_waiting`: a prompt or a waiting request needs the device, so nobody
    speculates; `cost`: the step's cost by rows, as measured. A stream whose proposals
    do not pay tries its longest now and then (PROBE_SHARE). Spare rows are dealt one at
    a time round the streams that want more, so none takes a second before each has had
    its first; rows for surely right tokens first, as each yields a token where a guess
    yields less."""
    base = len(streams)
    spare = row_budget - base
    if others_waiting or spare <= 0:
        return [0] * base
    wants = []
    for s in streams:
        most = min(s.most, max_draft, spare)

        def extra(k: int) -> float:
            return cost(base, base + k)

        k = best_length(s.acceptance, most, extra, s.sure)
        if k == 0 and most > 0 and s.since_tried * PROBE_SHARE >= extra(most) - 1.0:
            k = most
        wants.append(k)
    given = [0] * base
    for caps in ([min(w, s.sure) for w, s in zip(wants, streams, strict=True)], wants):
        while spare > 0:
            dealt = False
            for i, cap in enumerate(caps):
                if spare > 0 and given[i] < cap:
                    given[i] += 1
                    spare -= 1
                    dealt = True
            if not dealt:
                break
    return given
