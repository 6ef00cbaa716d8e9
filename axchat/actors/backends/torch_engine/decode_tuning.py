"""Choices about the decode step made by measuring it at load, not by assumption:
which dtype and how many intra-op threads, and the warm-up (and compile) before ready.

Why measure: on a CPU without native bfloat16 a bfloat16 matmul converts every weight
and can lose to float32 although it reads half the bytes; on a CPU that other processes
share, a second intra-op thread that gets descheduled stalls every small kernel for a
time slice. Neither is knowable from the model's config.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from axchat.actors.backends.torch_engine.lean_llama import LeanLlama
from axchat.actors.backends.torch_engine.matmul_lanes import Lanes

log = logging.getLogger(__name__)

PROBE_PROMPT = 32  # tokens fed before timing, so attention has some length to read
PROBE_STEPS = 6
PROBE_CHUNK = 32  # a prompt chunk's tokens when timing prefill
PRUNE = 2.0  # a candidate this many times slower at batch-1 decode is not probed further
CHUNK_MIN, CHUNK_MAX, CHUNK_STEP = 16, 256, 16  # bounds of the prompt chunk chosen at load


@dataclass(frozen=True)
class Plan:
    """How the forward uses the cores: `threads` intra-op threads in each of `lanes`
    threads that split every projection's columns (matmul_lanes)."""

    threads: int
    lanes: int = 1

    def __str__(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return threads if self.lanes == 1 else f"{self.lanes} lanes of {threads}"


def plans(budget: int, lanes: bool) -> list[Plan]:
    """What to measure with `budget` cores: all of them in one thread pool, half of them
    (other processes on the same cores stall a pool), and, on a CPU, one thread per
    core each taking a share of every matmul's columns (`lanes`)."""
    found = [Plan(budget), Plan(max(1, budget // 2))]
    if lanes and budget > 1:
        found.append(Plan(1, budget))
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Tuned:
    lean: LeanLlama
    dtype: torch.dtype
    plan: Plan
    reason: str  # one line for the log and status: what was measured
    prefill_chunk: int = CHUNK_MAX  # prompt tokens one forward takes between decode steps


def chunk_for(batch_step_ms: float, chunk_ms: float, probe_chunk: int = PROBE_CHUNK) -> int:
    """Prompt tokens per chunk so that one chunk costs about one full-batch decode step.

    The device actor alternates prompt chunks with decode steps, so a chunk's time is
    what every other stream waits on top of its own step while a long prompt goes in.
    On a slow CPU (10 ms a prompt token for the SmolLM2 shape on one core) a fixed 256
    made those streams stall 2.5 s a token; on a GPU a chunk costs little and this gives
    the largest. The long prompt itself takes longer in more, smaller chunks: that is
    the price of the others' stream not freezing.
    """
    if not (0 < batch_step_ms < math.inf and 0 < chunk_ms < math.inf):
        return CHUNK_MAX  # a probe that did not run (pruned) or measured nothing
    tokens = int(batch_step_ms / (chunk_ms / probe_chunk)) // CHUNK_STEP * CHUNK_STEP
    return max(CHUNK_MIN, min(CHUNK_MAX, tokens))


def step_ms(lean: LeanLlama, steps: int = PROBE_STEPS, slot: int = 0) -> float:
    """Median milliseconds of a batch-1 decode step on `slot` (its KV is overwritten)."""
    return _probe(lean, rows=1, chunk=1, repeats=steps, first_slot=slot)


def _probe(lean: LeanLlama, rows: int, chunk: int, repeats: int, first_slot: int = 0) -> float:
    """Median milliseconds of a forward of `chunk` tokens on each of `rows` slots,
    after a PROBE_PROMPT-token prompt in each and one untimed forward."""
    slots = list(range(first_slot, first_slot + rows))
    with torch.inference_mode():
        prompt = (torch.arange(PROBE_PROMPT, device=lean.device)[None] % 8).expand(rows, -1)
        lean.forward(prompt, slots, [0] * rows)  # one forward for all rows: load time counts
        tokens = torch.zeros((rows, chunk), dtype=torch.long, device=lean.device)
        lean.forward(tokens, slots, [PROBE_PROMPT] * rows)  # first-call allocations off the clock
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            lean.forward(tokens, slots, [PROBE_PROMPT + (i + 1) * chunk] * rows)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def choose(build: Callable[[torch.dtype], LeanLlama], dtypes: Sequence[torch.dtype], candidates: Sequence[Plan]) -> Tuned:
    """Time what the device actor runs (a batch-1 decode step, a full-batch decode step,
    a prompt chunk) for each dtype and plan; keep the candidate whose worst slowdown
    against the best on any of the three is smallest.

    All three count: bfloat16 without native CPU support halves the bytes a batch-1
    step reads, but its matmuls then run several times slower for a batch or a prompt.
    """
    built = {dtype: build(dtype) for dtype in dtypes}
    b1: dict[tuple[torch.dtype, Plan], float] = {}
    for dtype, lean in built.items():
        for plan in candidates:
            _apply(lean, plan)
            b1[dtype, plan] = _probe(lean, 1, 1, PROBE_STEPS)
    timings: dict[tuple[torch.dtype, Plan], tuple[float, float, float]] = {}
    for (dtype, plan), ms in b1.items():
        if ms > PRUNE * min(b1.values()):
            # This far behind on the commonest step it cannot win; its slower probes
            # would take seconds (a stalled thread pool) for nothing.
            timings[dtype, plan] = (ms, float("inf"), float("inf"))
            continue
        lean = built[dtype]
        _apply(lean, plan)
        timings[dtype, plan] = (ms, _probe(lean, lean.cache.shape[0], 1, 2), _probe(lean, 1, PROBE_CHUNK, 1))
    best = [min(t[i] for t in timings.values()) for i in range(3)]

    def regret(key: tuple[torch.dtype, Plan]) -> float:
        return max(t / b for t, b in zip(timings[key], best, strict=True))

    dtype, plan = min(timings, key=regret)
    for other, lean in built.items():
        if other is not dtype:
            lean.close()
    _apply(built[dtype], plan)
    rows = built[dtype].cache.shape[0]
    measured = "; ".join(
        f"{_name(d)}/{p} " + "/".join(f"{x:.1f}" if x < float("inf") else "-" for x in ms) + " ms"
        for (d, p), ms in timings.items()
    )
    what = f"decode b1/decode b{rows}/prompt chunk of {PROBE_CHUNK}"
    if len(timings) == 1:
        reason = f"as configured ({what}: {measured})"
    else:
        reason = f"least slowdown on the worst of {what}: {measured}"
    _, batch_ms, chunk_ms = timings[dtype, plan]
    chunk = chunk_for(batch_ms, chunk_ms)
    reason += f"; prompt chunks of {chunk} tokens (about one b{rows} decode step)"
    return Tuned(built[dtype], dtype, plan, reason, chunk)


def _apply(lean: LeanLlama, plan: Plan) -> None:
    """Set the calling thread's intra-op threads and the model's lanes to `plan`."""
    torch.set_num_threads(plan.threads)
    current = lean.lanes.count if lean.lanes is not None else 1
    if current != plan.lanes:
        if plan.lanes > 1:
            lean.use_lanes(Lanes(plan.lanes))
        else:
            lean.close()


def warm_up(lean: LeanLlama) -> float:
    """Run every shape family the device actor uses (a prompt chunk, batch-1 and batched
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
