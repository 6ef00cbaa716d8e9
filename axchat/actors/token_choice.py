"""How the next token is chosen from a row of logits: a request's sampling settings
checked (`validate`), then applied (`SequenceSampler`): greedy or seeded random draws
with Hugging Face's repetition penalty, temperature, top-k, top-p and min-p, in numpy.
Plain functions; the sampler actor (`sampler.py`) runs them off the event loop."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from axchat.protocol.v1 import Sampling

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
# A ceiling over any context a model has: the reply ends at the context anyway, and an
# absurd value (2**64 - 1) is refused as the mistake it is rather than carried around.
MAX_TOKENS_CEILING = 1 << 20

# Cumulative sums over the whole vocabulary are sequential and slow in numpy, so weight
# vectors longer than this are summed a block at a time and only the chosen block is
# walked.
_BLOCK = 1024
# Top-p first sorts only this many of the best candidates: a real row's nucleus is
# usually far smaller, and a partition costs a fraction of a full sort.
_NUCLEUS_TRY = 4096
# When that falls short, candidates are bucketed by how many nats below the best they
# lie, so that only the bucket where the nucleus ends needs sorting. The last bucket
# takes everything further down.
_BUCKETS_PER_NAT = 64
_BUCKETS = 64 * _BUCKETS_PER_NAT


class BadField(NamedTuple):
    """A refused setting: `param` is its path as the protocol's `error.param` carries it."""

    param: str
    message: str


def validate(params: Sampling) -> BadField | None:
    """The first bad field of `params` and a sentence naming it, or None when all are fine."""
    t = params.temperature
    if not _is_real(t) or not math.isfinite(t) or t < 0:
        return _bad("temperature", f"must be a finite number >= 0, got {t!r}")
    if not _is_int(params.top_k) or params.top_k < 0:
        return _bad("top_k", f"must be an integer >= 0 (0 = off), got {params.top_k!r}")
    # Written as `not (...)` so that NaN, which fails every comparison, is rejected too.
    if not _is_real(params.top_p) or not (0 < params.top_p <= 1):
        return _bad("top_p", f"must be in (0, 1], got {params.top_p!r}")
    if not _is_real(params.min_p) or not (0 <= params.min_p <= 1):
        return _bad("min_p", f"must be in [0, 1], got {params.min_p!r}")
    rp = params.repetition_penalty
    if not _is_real(rp) or not math.isfinite(rp) or not rp > 0:
        return _bad("repetition_penalty", f"must be a finite number > 0, got {rp!r}")
    if not _is_int(params.max_tokens) or not 1 <= params.max_tokens <= MAX_TOKENS_CEILING:
        return _bad("max_tokens", f"must be an integer from 1 to {MAX_TOKENS_CEILING}, got {params.max_tokens!r}")
    # Refused rather than folded into another seed: a negative seed is a client's mistake.
    if params.seed is not None and (not _is_int(params.seed) or params.seed < 0):
        return _bad("seed", f"must be null or an integer >= 0, got {params.seed!r}")
    if len(params.stop) > MAX_STOP_STRINGS:
        return _bad("stop", f"must hold at most {MAX_STOP_STRINGS} strings, got {len(params.stop)}")
    for i, s in enumerate(params.stop):
        if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
            got = f"{len(s)} characters" if isinstance(s, str) else type(s).__name__
            return _bad(f"stop[{i}]", f"must be a non-empty string of at most {MAX_STOP_CHARS} characters, got {got}")
    return None


def _bad(field: str, requirement: str) -> BadField:
    param = f"sampling.{field}"
    return BadField(param, f"{param} {requirement}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class SequenceSampler:
    """Per-request sampling state: the parameters, a seeded RNG, the seen tokens for the repetition penalty.

    Greedy (temperature 0) takes the argmax of the penalised logits and ignores top_k,
    top_p, min_p and the RNG. Otherwise the warpers run in Hugging Face's order:
    repetition penalty, temperature, top_k, top_p, min_p, then a softmax normalised in
    float64 and one draw from a Mersenne Twister seeded once per request, so a seed and a
    sequence of logits fix the tokens. The penalty, as in HF, depends on whether a token
    occurred (prompt or output), not how often. NaN logits count as -inf; when no usable
    logit is left (all -inf or NaN) `choose` returns the raw array's argmax rather than
    fail, and when some logits are +inf it draws uniformly among those, ignoring the
    other settings. `choose` never writes to the array it is given (the device hands
    over read-only buffers); it is not safe to call on one sampler from two threads at
    once, but different samplers may run on different threads.
    """

    __slots__ = ("_greedy", "_ids", "_max_id", "_n_ids", "_penalty", "_rng", "_seen", "generated", "params")

    def __init__(self, params: Sampling, context_ids: Sequence[int]) -> None:
        self.params = params
        self.generated: list[int] = []
        # A temperature that rounds to 0 in float32 would divide the best logit 0 by 0:
        # greedy in all but name. Negative or NaN ones (validate() refuses them) end up
        # here too rather than inverting the distribution.
        self._greedy = not np.float32(params.temperature) > 0
        self._penalty = float(params.repetition_penalty)
        # Made even when greedy: it is cheap, and then every sampler has one to inspect.
        # Python's own generator: numpy's (numpy.random, numpy.ma for np.unique) would add
        # 8 MiB to the daemon, or 40 ms to the first request that loads them.
        self._rng = random.Random(params.seed)
        # The distinct ids, sorted (what np.unique gives, without its numpy.ma import);
        # a negative id would index from the vocabulary's end.
        ids = np.sort(np.asarray(context_ids, dtype=np.int64))
        ids = ids[(ids >= 0) & np.concatenate(([True], ids[1:] != ids[:-1]))]
        # The penalty touches each seen id once however often it occurs, so a set plus a
        # growing id array (for fancy indexing) is all it needs; both grow by one at most
        # per token instead of being rebuilt from the history.
        self._seen: set[int] = set(ids.tolist())
        self._ids = np.empty(max(64, 2 * ids.size), dtype=np.intp)
        self._ids[: ids.size] = ids
        self._n_ids = int(ids.size)
        self._max_id = int(ids[-1]) if ids.size else -1

    @property
    def greedy(self) -> bool:
        return self._greedy

    def choose(self, logits: np.ndarray) -> int:
        """Pick the next token from a 1-D row of logits and record it in the history."""
        x = np.asarray(logits)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
        token = self._choose_greedy(x) if self._greedy else self._choose_sampled(x)
        self._record(token)
        return token

    # ------------------------------------------------------------------ greedy

    def _choose_greedy(self, x: np.ndarray) -> int:
        i = int(np.argmax(x))
        v = x[i]
        has_nan = bool(np.isnan(v))  # argmax returns the first NaN when there is one
        if has_nan:
            return self._greedy_slow(x, has_nan)
        if self._penalty == 1.0 or self._n_ids == 0:
            return i
        # A penalty above 1 only lowers seen logits, so an unseen argmax stays the argmax:
        # the common case costs one pass and no copy.
        if self._penalty > 1.0 and i not in self._seen:
            return i
        return self._greedy_slow(x, has_nan)

    def _greedy_slow(self, x: np.ndarray, has_nan: bool) -> int:
        y = self._working_copy(x, has_nan)
        i = int(np.argmax(y))
        if np.isneginf(y[i]):
            return int(np.argmax(x))
        return i

    # ------------------------------------------------------------------ sampled

    def _choose_sampled(self, x: np.ndarray) -> int:
        p = self.params
        y = self._working_copy(x, None)
        n = y.size
        m = float(y.max())
        if m == -math.inf:
            return int(np.argmax(x))
        if m == math.inf:
            # Infinite logits would make the softmax NaN; they hold all the mass between
            # them, so share it evenly.
            top = np.flatnonzero(y == math.inf)
            return int(top[self._rng.randrange(top.size)])

        # Top-k is scale-invariant, so it can run before the temperature without changing
        # HF's result. Only values are selected (np.partition and np.sort are 2-4x faster
        # than their arg- forms); `_token_of` maps the drawn value back to a token id.
        cand = y
        if 0 < p.top_k < n:
            sel = _scratch("sel", n, y.dtype)
            np.copyto(sel, y)
            sel.partition(n - p.top_k)
            cand = sel[n - p.top_k :]
        vals, w = cand, _weights(cand, m, p.temperature, _scratch("w", cand.size, np.float64))
        if p.top_p < 1.0:
            vals, w = _nucleus(cand, w, m, p.temperature, p.top_p)
        if p.min_p > 0.0:
            # HF compares renormalised probabilities with min_p * max; the best weight is
            # exactly 1 and renormalising keeps ratios, so this is the same test.
            # (Multiplying by the mask: assigning through a scattered boolean mask is 5x slower.)
            w *= w >= p.min_p
        j = _first_reaching(w, self._rng.random() * float(np.sum(w)), strict=True)
        return j if vals is y else _token_of(y, vals, j)

    # ------------------------------------------------------------------ shared

    def _working_copy(self, x: np.ndarray, has_nan: bool | None) -> np.ndarray:
        """Copy of `x` in scratch memory, NaN turned to -inf, the repetition penalty applied.

        `has_nan` says whether `x` holds NaN, when the caller already knows; None to check.
        """
        # float16 widens to float32 and float64 stays, so the penalty keeps the input's precision.
        y = _scratch("y", x.size, np.promote_types(x.dtype, np.float32))
        np.copyto(y, x, casting="unsafe")
        # max() propagates NaN, so one reduction decides whether the masking pass is needed.
        if has_nan or (has_nan is None and np.isnan(y.max())):
            y[np.isnan(y)] = -np.inf
        if self._penalty != 1.0 and self._n_ids:
            ids = self._ids[: self._n_ids]
            if self._max_id >= y.size:  # ids from another vocabulary would IndexError
                ids = ids[ids < y.size]
            v = y[ids]
            y[ids] = np.where(v > 0, v / self._penalty, v * self._penalty)
        return y

    def _record(self, token: int) -> None:
        self.generated.append(token)
        if token in self._seen:
            return
        self._seen.add(token)
        if self._n_ids == self._ids.size:
            self._ids = np.concatenate([self._ids, np.empty_like(self._ids)])
        self._ids[self._n_ids] = token
        self._n_ids += 1
        self._max_id = max(self._max_id, token)


_local = threading.local()


def _scratch(name: str, n: int, dtype: np.dtype | type) -> np.ndarray:
    """A reusable per-thread array of `n` elements, valid until the next call on this thread.

    Fresh vocabulary-sized arrays on every token cost page faults (glibc returns large
    blocks to the kernel on free), measured at as much time as the arithmetic itself.
    """
    buf: np.ndarray | None = getattr(_local, name, None)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = np.empty(n, dtype=dtype)
        setattr(_local, name, buf)
    return buf[:n]


def _weights(vals: np.ndarray, m: float, temperature: float, out: np.ndarray | None = None) -> np.ndarray:
    """Unnormalised softmax of `vals / temperature` as float64, the best weight exactly 1.

    Subtracting the max before dividing means the division cannot overflow. For float32
    logits the exp runs in float32, twice as fast as float64 here and as precise as its
    input; sums and cumulative sums, where a 128k-term float32 total would drift, are
    float64. `out`, when given, receives the result.
    """
    z = np.empty(vals.size, vals.dtype) if out is None else _scratch("z", vals.size, vals.dtype)
    np.subtract(vals, vals.dtype.type(m), out=z)
    z /= temperature
    np.exp(z, out=z)
    if out is None:
        return z.astype(np.float64, copy=False)
    np.copyto(out, z)
    return out


def _nucleus(
    cand: np.ndarray, w: np.ndarray, m: float, temperature: float, top_p: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut `cand`, weighted by `w`, to its top-p nucleus; returns the values and weights to draw from.

    The nucleus is the shortest run of best candidates whose weight reaches top_p of the
    whole, never empty; equal logits join it in id order. The result is either a short
    sorted copy or `cand` itself with `w` zeroed, in place, outside the nucleus.
    """
    n = cand.size
    target = top_p * float(np.sum(w))
    if n <= 4 * _NUCLEUS_TRY:
        vals = np.sort(cand)[::-1]
        ws = _weights(vals, m, temperature)
        cut = _first_reaching(ws, target)
        return vals[: cut + 1], ws[: cut + 1]
    part = _scratch("part", n, cand.dtype)
    np.copyto(part, cand)
    part.partition(n - _NUCLEUS_TRY)
    vals = np.sort(part[n - _NUCLEUS_TRY :])[::-1]
    ws = _weights(vals, m, temperature)
    if float(np.sum(ws)) >= target:
        cut = _first_reaching(ws, target)
        return vals[: cut + 1], ws[: cut + 1]

    # A flat row: histogram the mass by distance below the best logit, then sort only
    # the bucket where the running total crosses the target.
    d = _scratch("z", n, cand.dtype)
    np.subtract(cand.dtype.type(m), cand, out=d)
    d /= temperature  # divided, then scaled: a tiny temperature gives inf, never 0 * inf
    d *= _BUCKETS_PER_NAT
    np.minimum(d, _BUCKETS - 1, out=d)
    bucket = _scratch("bucket", n, np.intp)
    np.copyto(bucket, d, casting="unsafe")  # truncation is floor here: d >= 0
    cum = np.cumsum(np.bincount(bucket, weights=w, minlength=_BUCKETS))
    b = min(int(np.searchsorted(cum, target, side="left")), _BUCKETS - 1)
    before = float(cum[b - 1]) if b else 0.0
    members = np.flatnonzero(bucket == b)
    members = members[np.argsort(-cand[members], kind="stable")]
    cut = _first_reaching(w[members], target - before)
    w *= bucket <= b  # not w[bucket > b] = 0: a scattered boolean mask is 5x slower
    w[members[cut + 1 :]] = 0.0
    return cand, w


def _first_reaching(w: np.ndarray, target: float, strict: bool = False) -> int:
    """Index of the first prefix of `w` whose sum reaches `target` (exceeds it if strict).

    With strict=True and target = u * sum(w), u in [0, 1), this is an inverse-CDF draw
    that never lands on a zero weight. Rounding may leave the target beyond the last
    prefix sum; then the last positive weight is returned.
    """
    side: Literal["left", "right"] = "right" if strict else "left"
    n = w.size
    if n <= 4 * _BLOCK:
        start, seg = 0, w
    else:
        sums = np.cumsum(np.add.reduceat(w, np.arange(0, n, _BLOCK)))
        b = int(np.searchsorted(sums, target, side=side))
        if b >= sums.size:
            return _last_positive(w)
        if b:
            target -= float(sums[b - 1])
        start, seg = b * _BLOCK, w[b * _BLOCK : (b + 1) * _BLOCK]
    i = int(np.searchsorted(np.cumsum(seg), target, side=side))
    if i >= seg.size:
        return start + _last_positive(seg)
    return start + i


def _last_positive(w: np.ndarray) -> int:
    nz = np.flatnonzero(w > 0)
    return int(nz[-1]) if nz.size else w.size - 1


def _token_of(y: np.ndarray, vals: np.ndarray, j: int) -> int:
    """Token id of candidate `j`, where `vals` holds values selected from `y`.

    Equal logits are interchangeable, so the r-th candidate with a given value maps to
    the r-th token (in id order) holding that value; the mapping is one-to-one because
    the candidates are a sub-multiset of `y`.
    """
    v = vals[j]
    rank = int(np.count_nonzero(vals[:j] == v))
    return int(np.flatnonzero(y == v)[rank])
