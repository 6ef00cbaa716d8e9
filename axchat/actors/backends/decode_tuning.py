"""Choices about the decode step made by measuring it at load, not by assumption:
which dtype and how many intra-op threads, and the warm-up (and compile) before ready.

Why measure: on a CPU without native bfloat16 a bfloat16 matmul converts every weight
and can lose to float32 although it reads half the bytes; on a CPU that other processes
share, a second intra-op thread that gets descheduled stalls every small kernel for a
time slice. Neither is knowable from the model's config.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from axchat.actors.backends.lean_llama import LeanLlama

log = logging.getLogger(__name__)

PROBE_PROMPT = 32  # tokens fed before timing, so attention has some length to read
PROBE_STEPS = 6


@dataclass(frozen=True)
class Tuned:
    lean: LeanLlama
    dtype: torch.dtype
    threads: int
    reason: str  # one line for the log and status: what was measured


def step_ms(lean: LeanLlama, steps: int = PROBE_STEPS, slot: int = 0) -> float:
    """Median milliseconds of a batch-1 decode step on `slot` (its KV is overwritten)."""
    with torch.inference_mode():
        prompt = torch.arange(PROBE_PROMPT, device=lean.device)[None] % 8
        lean.forward(prompt, [slot], [0])
        token = torch.zeros((1, 1), dtype=torch.long, device=lean.device)
        lean.forward(token, [slot], [PROBE_PROMPT])  # first-call allocations off the clock
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            lean.forward(token, [slot], [PROBE_PROMPT + 1 + i])
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def choose(
    build: Callable[[torch.dtype], LeanLlama], dtypes: Sequence[torch.dtype], threads: Sequence[int]
) -> Tuned:
    """Time a few decode steps for each dtype and thread count; keep the fastest."""
    timings: dict[tuple[torch.dtype, int], float] = {}
    built: dict[torch.dtype, LeanLlama] = {}
    for dtype in dtypes:
        built[dtype] = build(dtype)
        for n in threads:
            torch.set_num_threads(n)
            timings[dtype, n] = step_ms(built[dtype])
    (dtype, n), _ = min(timings.items(), key=lambda kv: kv[1])
    torch.set_num_threads(n)
    measured = ", ".join(f"{_name(d)}/{t} threads {ms:.1f} ms" for (d, t), ms in timings.items())
    if len(timings) == 1:
        reason = f"as configured ({measured} per decode step)"
    else:
        reason = f"fastest measured decode step: {measured}"
    return Tuned(built[dtype], dtype, n, reason)


def warm_up(lean: LeanLlama) -> float:
    """Run every shape family the scheduler uses (a prompt chunk, batch-1 and batched
    decode) once, compiling them if the model is set to compile. Returns seconds."""
    t0 = time.perf_counter()
    slots = lean.cache.shape[0]
    with torch.inference_mode():
        for slot in range(min(slots, 2)):
            step_ms(lean, steps=2, slot=slot)
        if slots > 1:
            tokens = torch.zeros((2, 1), dtype=torch.long, device=lean.device)
            lean.forward(tokens, [0, 1], [PROBE_PROMPT + 3, PROBE_PROMPT + 3])
            lean.forward(tokens, [0, 1], [PROBE_PROMPT + 4, PROBE_PROMPT + 4])
    return time.perf_counter() - t0


def _name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
