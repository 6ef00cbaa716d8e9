"""The device's clocks: what decode forwards cost and what the daemon adds between them;
what a prompt token costs in a whole-prompt forward."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from typing import Any

from axchat.actors.device.sequence import ms
from axchat.actors.device.speculation_plan import flat_rows

# Steps of one row count whose fastest stands for its cost.
ROW_WINDOW = 8


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
        self._drafting_ns = 0  # a draft model's guesses for the next step (device thread)
        self.rows = RowCosts()

    def timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` as run on the device thread, its duration recorded as a decode forward."""

        def run(*args: Any) -> Any:
            start = time.monotonic_ns()
            try:
                return fn(*args)
            finally:
                end = time.monotonic_ns()
                start -= self._drafting_ns  # the step's proposals are part of its cost
                self._drafting_ns = 0
                self._forward.append(end - start)
                # (sequence ids, tokens) or, verifying proposals, (..., drafts)
                self.rows.observe(len(args[0]) + sum(map(len, args[2])) if len(args) > 2 else len(args[0]), ms(end - start))
                if self._last_end_ns:
                    self._gaps.append(start - self._last_end_ns)
                self._last_end_ns = end

        return run

    def drafting(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, a draft model guessing the proposals of the next `timed` step, as run on
        the device thread: its duration is counted in that step's, so that what a
        proposed token costs (RowCosts) includes guessing it."""

        def run(*args: Any) -> Any:
            start = time.monotonic_ns()
            try:
                return fn(*args)
            finally:
                self._drafting_ns += time.monotonic_ns() - start

        return run

    def interrupted(self) -> None:
        """Something other than a decode step ran: the next gap is not overhead."""
        self._last_end_ns = 0

    def step_ms(self) -> float:
        return ms(sum(self._forward) // len(self._forward)) if self._forward else 0.0

    def recent_step_ms(self, last: int = 4) -> float | None:
        """The latest few decode forwards' mean: what the batch running now costs."""
        recent = list(self._forward)[-last:]
        return ms(sum(recent) // len(recent)) if recent else None

    def overhead_ms(self) -> float:
        return ms(sum(self._gaps) // len(self._gaps)) if self._gaps else 0.0


class RowCosts:
    """Decode steps' time by the rows they fed (a row per stream and per proposed token):
    what a proposed token costs (speculation_plan.py). Each row count's cost is the
    fastest of its last few steps: other work on a shared CPU only ever slows a step,
    and one slowed step of a count tried rarely must not make it look dear for long."""

    def __init__(self) -> None:
        self._recent: dict[int, collections.deque[float]] = {}
        self._ms: dict[int, float] = {}

    def observe(self, rows: int, spent_ms: float) -> None:
        recent = self._recent.setdefault(rows, collections.deque(maxlen=ROW_WINDOW))
        recent.append(spent_ms)
        self._ms[rows] = min(recent)

    def cost(self, base: int, rows: int) -> float:
        """A step of `rows` rows against one of `base` rows, from the times measured.
        A row count not measured, between two measured ones, costs the straight line
        between them: once tried it is measured, so a guess too low corrects itself in
        one step (pricing it as the next larger one would keep a stream whose long tries
        failed from ever trying a short one). Beyond every measured count, or before
        any, it is `flat_rows`'s optimistic guess, so that it gets tried and measured.
        While only larger steps than `base` were measured, proposals cost without bound:
        taking a larger step's time for the plain step would make them look free, and
        streams that propose at every step (a draft model's) would never run the plain
        step that measures it."""
        if base not in self._ms and any(r > base for r in self._ms):
            return math.inf
        at_base, at_rows = self._ms_at(base), self._ms_at(rows)
        if at_base is None or at_rows is None:
            return flat_rows(base, rows)
        return max(at_rows / at_base, 1.0)

    def _ms_at(self, rows: int) -> float | None:
        if rows in self._ms:
            return self._ms[rows]
        above = min((r for r in self._ms if r > rows), default=None)
        below = max((r for r in self._ms if r < rows), default=None)
        if above is not None and below is not None:
            share = (rows - below) / (above - below)
            return self._ms[below] + share * (self._ms[above] - self._ms[below])
        if above is not None:
            return self._ms[above]
        return None if below is None else self._ms[below] * flat_rows(below, rows)


class PrefillRate:
    """Milliseconds a prompt token costs in whole-prompt forwards, smoothed (each new
    forward weighs half): what an idle device's wait for a lone newcomer's company is
    sized from."""

    def __init__(self) -> None:
        self._ms_per_token: float | None = None

    def observe(self, tokens: int, spent_ms: float) -> None:
        if tokens > 0:
            cost = spent_ms / tokens
            self._ms_per_token = cost if self._ms_per_token is None else (cost + self._ms_per_token) / 2

    def ms_per_token(self) -> float | None:
        return self._ms_per_token
