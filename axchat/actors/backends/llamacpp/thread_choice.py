"""How many threads llama.cpp computes with, chosen by timing decode steps at load.

Why measure: llama.cpp's threads meet at a spinning barrier after every operation
(hundreds a token). On a CPU that other processes share, a thread descheduled for a
time slice holds the others at each barrier: measured here with the 2 cores busy, 2
threads decoded 20-30 times slower than 1. On an idle machine all the cores win.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from axchat.actors.backends.llamacpp.engine import Engine

log = logging.getLogger(__name__)

PROBE_PROMPT = 32
PROBE_STEPS = 6
PROBE_SEQ = 0  # free at load: no request has started


def _step_ms(engine: Engine, start: int) -> float:
    times = []
    for i in range(PROBE_STEPS):
        t0 = time.perf_counter()
        engine.run([5], [start + i], [PROBE_SEQ], [0])
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def choose(engine: Engine, candidates: list[int]) -> tuple[int, str]:
    """The candidate with the fastest batch-1 decode step (set on the engine), and a
    line saying what was measured."""
    engine.run(list(range(4, 4 + PROBE_PROMPT)), list(range(PROBE_PROMPT)), [PROBE_SEQ] * PROBE_PROMPT, [PROBE_PROMPT - 1])
    measured: dict[int, list[float]] = {n: [] for n in candidates}
    position = PROBE_PROMPT
    for _ in range(2):  # interleaved, so a burst of load elsewhere hits both alike
        for n in candidates:
            engine.set_threads(n)
            measured[n].append(_step_ms(engine, position))
            position += PROBE_STEPS
    engine.forget(PROBE_SEQ)
    best = min(candidates, key=lambda n: min(measured[n]))
    engine.set_threads(best)
    said = ", ".join(f"{n}: {min(v):.1f} ms" for n, v in measured.items())
    log.info("llama.cpp threads: %d (decode step by thread count: %s)", best, said)
    return best, f"{best} threads by decode step measured at load ({said})"
