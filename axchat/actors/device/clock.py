"""The device's clocks: what decode forwards cost and what the daemon adds between them;
what a prompt token costs in a whole-prompt forward."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from axchat.actors.device.sequence import ms


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

    def timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` as run on the device thread, its duration recorded as a decode forward."""

        def run(*args: Any) -> Any:
            start = time.monotonic_ns()
            try:
                return fn(*args)
            finally:
                end = time.monotonic_ns()
                self._forward.append(end - start)
                if self._last_end_ns:
                    self._gaps.append(start - self._last_end_ns)
                self._last_end_ns = end

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
