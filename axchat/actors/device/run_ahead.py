"""Several greedy decode steps in one trip to the device thread.

Why: every token that comes back to the event loop costs the daemon about 0.7 ms of
Python (the device's bookkeeping, the tokenizer's detokenizing, the reply stage, the
front door's send, three inproc hops) and the client as much again. On a CPU that
work runs beside the engine's next forward and takes a core from it: llama.cpp's
threads meet at a spinning barrier after every operation, so one preempted thread
holds them all. When every running stream is greedy and nothing else wants the device,
the next tokens need nothing from the loop: the device thread picks them itself
(an argmax, microseconds) and feeds them straight back, for a bounded time, and the
loop then handles a run of tokens per stream in one pass and one message.

Each step may also verify proposed tokens (drafts.py) within the rows the batch has
spare (speculation_plan.py): a stream then gets several tokens from one step.

Bounds: a run stops at the first step boundary after anything arrives for the device
(a newcomer, a cancel, a stop string: `interrupt`), when the next step would pass
`budget_ms`, or when every lane has ended. A stream's text then arrives in pieces of
at most that budget's worth of tokens, and a newcomer or a cancel waits one step, as
it would without runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from axchat.actors.device.drafts import ModelProposals, Speculation, step_drafts, verify
from axchat.actors.device.speculation_plan import StepCost, flat_rows
from axchat.actors.device.turn_end import end_of_turn
from axchat.actors.token_mask import TokenMask, fill_together

# A run's length in time: long enough that each run boundary (the loop's work for the
# run's tokens, taken from the engine's threads on a small CPU) is spread over several
# steps, short enough that text still streams (7 pieces a second at least). 135M shape,
# 2-core Xeon, a step of 8 streams ~40 ms: 75 ms ran them one step at a time; 150 ms
# (3-4 steps) gave 8 clients 0.98-1.00x of llama-server's tokens/s against 0.94-0.96x
# in three alternating pairs, and one stream 0.95-1.00x against 0.93-0.95x; 250 ms
# gained no more.
BUDGET_MS = 150.0


@dataclass(eq=False)
class Lane:
    """One stream's part in a run: fed `token` first; `choose` picks from a row of
    logits; it ends where `end_of_turn` says, with `ends` its end-of-turn ids and
    `room` the tokens it may still make; `spec`: its proposals, None when it makes none."""

    rid: int
    token: int
    choose: Callable[[Any], int]
    room: int
    ends: frozenset[int]
    mask: TokenMask | None = None  # a constrained stream's grammar mask
    spec: Speculation | None = None
    chosen: list[int] = field(default_factory=list)
    ended: bool = False  # its turn ended (or its grammar allowed nothing) in the run

    @property
    def fed(self) -> list[int]:
        """Chosen tokens the run fed back (all but the last: it is fed by the next step)."""
        return self.chosen[:-1]


def without_drafts(decode: Callable[[Sequence[int], Sequence[int]], Any]) -> Callable[..., Sequence[Any]]:
    """A backend's plain `decode` in `decode_drafts`' shape, for runs where no lane
    speculates."""

    def rows(seq_ids: Sequence[int], token_ids: Sequence[int], drafts: Sequence[Sequence[int]]) -> Sequence[Any]:
        return [row[None] for row in decode(seq_ids, token_ids)]

    return rows


def run(
    decode: Callable[[Sequence[int], Sequence[int], Sequence[Sequence[int]]], Sequence[Any]],
    lanes: Sequence[Lane],
    interrupt: threading.Event,
    budget_ms: float | None = None,
    trim: Callable[[int, int], None] | None = None,
    row_budget: int = 0,
    cost: StepCost = flat_rows,
    model: ModelProposals | None = None,
    cells: int | None = None,
) -> Sequence[Lane]:
    """Decode steps for `lanes` until a bound (module docstring); on the device thread.
    `decode` is the backend's `decode_drafts`, `trim` its `trim` (None: no lane
    speculates), `row_budget` the rows a step may take, `cost` their measured cost,
    `model` the draft model's guessing (None: none), `cells` the KV cells free for the
    run (None: no bound; a run stops before a step they cannot take, kv_room.py). Each lane's `chosen` gets its
    tokens in order; returns `lanes`. The first step always runs: it is the step the
    planner asked for."""
    active = list(lanes)
    start = time.monotonic_ns()
    budget_ns = (BUDGET_MS if budget_ms is None else budget_ms) * 1e6
    while True:
        step_start = time.monotonic_ns()
        streams = [(lane.spec if trim is not None else None, lane.room - len(lane.chosen)) for lane in active]
        drafts = step_drafts(streams, row_budget=row_budget, others_waiting=False, cost=cost, model=model)
        rows = decode([lane.rid for lane in active], [lane.token for lane in active], drafts)
        fill_together([lane.mask for lane in active if lane.mask is not None])
        still = []
        for lane, lane_rows, proposed in zip(active, rows, drafts, strict=True):
            draft = proposed[: len(lane_rows) - 1]  # what the backend had room to verify
            chosen = verify(lane.choose, lane_rows, draft, produced=len(lane.chosen), ends=lane.ends, room=lane.room)
            if lane.spec is not None:
                lane.spec.settle(draft, chosen)
            if trim is not None and len(draft) >= len(chosen):
                trim(lane.rid, len(draft) + 1 - len(chosen))
            lane.chosen.extend(chosen)
            if cells is not None:
                cells -= len(chosen)  # the token fed and the proposals kept
            if lane.mask is not None and lane.mask.failed is not None:
                lane.ended = True  # a dead end: the loop ends the stream with the reason
            elif end_of_turn(len(lane.chosen) - 1, chosen[-1:], ends=lane.ends, limit=lane.room).reason is None:
                lane.token = chosen[-1]
                still.append(lane)
            else:
                lane.ended = True
        active = still
        now = time.monotonic_ns()
        if not active or interrupt.is_set() or (now - start) + (now - step_start) > budget_ns:
            return lanes
        if cells is not None and len(active) > cells:
            return lanes  # the next step's cells are not free: the loop makes room first
