"""How many threads llama.cpp computes with, chosen by timing decode steps at load.

Why measure: llama.cpp's threads meet at a spinning barrier after every operation
(hundreds a token). On a CPU that other processes share, a thread descheduled for a
time slice holds the others at each barrier: measured here with the 2 cores busy, 2
threads decoded 20-30 times slower than 1. On an idle machine all the cores win.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from axchat.actors.backends.llamacpp.engine import Engine

log = logging.getLogger(__name__)

PROBE_PROMPT = 32
PROBE_STEPS = 6
PROBE_SEQ = 0  # free at load: no request has started
# A candidate whose first steps take (median) this many times the best one's so far cannot win:
# its probe stops there. On a loaded CPU a 2-thread step took 5-20x a 1-thread one, and
# probing it in full held the daemon's start-up for 5-11 s (the 135M shape).
GIVE_UP_RATIO = 3.0
GIVE_UP_AFTER = 2  # steps


def _median(values: list[float]) -> float:
    # Not the statistics module's: it would bring fractions and its C part into every
    # daemon (~0.3 MiB) for a handful of timings.
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _step_ms(engine: Engine, start: int, give_up_ms: float | None) -> tuple[float, int]:
    """The median decode step and how many steps were run."""
    times: list[float] = []
    for i in range(PROBE_STEPS):
        t0 = time.perf_counter()
        engine.run([5], [start + i], [PROBE_SEQ], [0])
        times.append((time.perf_counter() - t0) * 1e3)
        if give_up_ms is not None and len(times) >= GIVE_UP_AFTER and _median(times) > give_up_ms:
            break
    return _median(times), len(times)


def choose(engine: Engine, candidates: list[int]) -> tuple[int, str]:
    """The candidate with the fastest batch-1 decode step (set on the engine), and a
    line saying what was measured."""
    # The prompt on the fewest threads: the one count that never collapses under load.
    engine.set_threads(min(candidates))
    engine.run(list(range(4, 4 + PROBE_PROMPT)), list(range(PROBE_PROMPT)), [PROBE_SEQ] * PROBE_PROMPT, [PROBE_PROMPT - 1])
    measured: dict[int, list[float]] = {n: [] for n in candidates}
    position = PROBE_PROMPT
    for _ in range(2):  # interleaved, so a burst of load elsewhere hits both alike
        for n in sorted(candidates):  # the fewest first: the others then have a figure to beat
            engine.set_threads(n)
            best = min((min(v) for v in measured.values() if v), default=None)
            step, ran = _step_ms(engine, position, None if best is None else best * GIVE_UP_RATIO)
            measured[n].append(step)
            position += ran
    engine.forget(PROBE_SEQ)
    best = min(candidates, key=lambda n: min(measured[n]))
    engine.set_threads(best)
    said = ", ".join(f"{n}: {min(v):.1f} ms" for n, v in measured.items())
    log.info("llama.cpp threads: %d (decode step by thread count: %s)", best, said)
    return best, f"{best} threads by decode step measured at load ({said})"
