"""Linear layers split by output columns across threads ("lanes"), each a one-thread torch;
and any other work split in independent parts (attention by query positions).

Why: on a small CPU, a decode step for several sequences is a matmul with a handful of
rows (one per sequence), and MKL does not spread such a thin matmul over its threads:
measured on a 2-core EPYC, an 8-row step of the SmolLM2-135M shape took as long with two
intra-op threads as with one (~175 ms), while the same matmuls cut in two column halves,
one per thread, took ~137 ms, and a 32-token prompt chunk went from ~300 to ~210 ms.
Each column of the output is computed exactly as before (same rows, same reduction over
the input features), so the results are bit for bit those of the unsplit matmul.

A one-row matmul (batch-1 decode) streams the weights and gains nothing from a second
thread but the hand-off cost, so it stays whole, except for a big vocabulary head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

# A weight with at least this many output rows (a vocabulary head) is split even for
# one row of input: it is large enough that the second thread's share beats the hand-off.
SPLIT_ALWAYS_ROWS = 16384
# Below this many multiply-adds a matmul takes about as long as handing half of it to
# another thread (tens of microseconds): a small model's projections stay whole.
MIN_SPLIT_MACS = 1 << 18
ALIGN = 16  # split points on multiples of this many columns (whole SIMD vectors)


T = TypeVar("T")


def _in_inference_mode(fn: Callable[..., T], *args: Any) -> T:
    with torch.inference_mode():  # per thread: the helpers need it as the caller has it
        return fn(*args)


def _mm_into(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    torch.mm(x, w.t(), out=out)


def _set_one_thread() -> None:
    torch.set_num_threads(1)


class Lanes:
    """`linear(x, w)` equal to F.linear(x, w) (no bias), run on `count` threads: the
    calling one and `count - 1` helpers that live as long as this object."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("lanes: count must be at least 1")
        self.count = count
        self._helpers = (
            ThreadPoolExecutor(count - 1, thread_name_prefix="axchat-lane", initializer=_set_one_thread)
            if count > 1
            else None
        )

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        features = x.shape[-1]
        rows = x.numel() // features if features else 0
        n = w.shape[0]
        if (
            self._helpers is None
            or (rows < 2 and n < SPLIT_ALWAYS_ROWS)
            or rows * n * features < MIN_SPLIT_MACS
            or n < ALIGN * self.count
        ):
            return F.linear(x, w)
        flat = x.reshape(rows, features)
        out = x.new_empty((rows, n))
        self.map(_mm_into, [(flat, w[a:b], out[:, a:b]) for a, b in self.bounds(n, ALIGN)])
        return out.view(*x.shape[:-1], n)

    def map(self, fn: Callable[..., T], parts: Sequence[tuple[Any, ...]]) -> list[T]:
        """[fn(*part) for part in parts], the first on the calling thread while the
        helpers take the others; at most one part per lane."""
        if len(parts) > self.count:
            raise ValueError(f"{len(parts)} parts for {self.count} lanes")
        helpers = self._helpers
        if helpers is None or len(parts) < 2:
            return [fn(*part) for part in parts]
        futures = [helpers.submit(_in_inference_mode, fn, *part) for part in parts[1:]]
        try:
            first = fn(*parts[0])
        finally:
            # Every helper is done with what the parts share (an output they fill)
            # before it is returned or dropped, even when one of them failed.
            wait(futures)
        return [first, *(f.result() for f in futures)]

    def bounds(self, n: int, align: int = 1) -> list[tuple[int, int]]:
        """[0, n) cut into at most `count` runs of about equal length, on multiples of `align`."""
        step = -(-n // self.count // align) * align
        return [(a, min(n, a + step)) for a in range(0, n, step)]

    def close(self) -> None:
        if self._helpers is not None:
            self._helpers.shutdown(wait=True)
            self._helpers = None
