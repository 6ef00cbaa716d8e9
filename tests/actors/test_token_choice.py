"""Tests for axchat.actors.token_choice: greedy, penalties, warpers, seeding and validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import msgspec
import numpy as np
import pytest

from axchat.actors.token_choice import (
    _NUCLEUS_TRY,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    SequenceSampler,
    _first_reaching,
    _nucleus,
    _weights,
    validate,
)
from axchat.protocol.v1 import Sampling

VOCAB = 128256


def _logits(seed: int, n: int = 1000, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def _draws(params: Sampling, logits: np.ndarray, count: int, context: Sequence[int] = ()) -> np.ndarray:
    """`count` draws from one sampler, each from the same logits.

    The repetition penalty must stay off here, or every draw would change the next one's logits.
    """
    assert params.repetition_penalty == 1.0
    s = SequenceSampler(params, context)
    return np.array([s.choose(logits) for _ in range(count)])


def _frequencies(draws: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(draws, minlength=n) / draws.size


def _reference_probs(logits: np.ndarray, params: Sampling) -> np.ndarray:
    """Final sampling distribution, computed the slow, obvious way Hugging Face's warpers do."""
    scores = logits.astype(np.float64) / params.temperature
    n = scores.size
    if 0 < params.top_k < n:
        kth = np.sort(scores)[-params.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    if params.top_p < 1.0:
        order = np.argsort(-scores, kind="stable")
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        cum = np.cumsum(probs[order])
        keep = (cum - probs[order]) < params.top_p  # mass before each token is below top_p
        keep[0] = True
        removed = order[~keep]
        scores[removed] = -np.inf
    if params.min_p > 0.0:
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        scores = np.where(probs < params.min_p * probs.max(), -np.inf, scores)
    probs = np.exp(scores - scores.max())
    return probs / probs.sum()


def _assert_matches(draws: np.ndarray, expected: np.ndarray) -> None:
    """Empirical frequencies within 5 binomial standard deviations; impossible tokens never drawn."""
    freq = _frequencies(draws, expected.size)
    sigma = np.sqrt(expected * (1 - expected) / draws.size)
    assert np.all(freq[expected == 0] == 0)
    np.testing.assert_array_less(np.abs(freq - expected), 5 * sigma + 1e-12)


def _entropy(freq: np.ndarray) -> float:
    nz = freq[freq > 0]
    return float(-(nz * np.log(nz)).sum())


# ---------------------------------------------------------------- greedy


@pytest.mark.parametrize("n", [1, 7, 1000, VOCAB])
def test_greedy_is_argmax(n: int) -> None:
    s = SequenceSampler(Sampling(), [])
    state = s._rng.getstate()
    for seed in range(5):
        x = _logits(seed, n)
        assert s.choose(x) == int(np.argmax(x))
    assert s._rng.getstate() == state, "greedy must not consume randomness"


def test_greedy_ignores_top_k_top_p_min_p() -> None:
    x = _logits(1)
    s = SequenceSampler(Sampling(top_k=3, top_p=0.1, min_p=0.9, seed=5), [])
    assert s.choose(x) == int(np.argmax(x))


def test_greedy_accepts_read_only_logits_and_leaves_them_alone() -> None:
    x = _logits(2)
    original = x.copy()
    ro = np.frombuffer(x.tobytes(), dtype=np.float32)
    top = int(np.argmax(x))
    s = SequenceSampler(Sampling(repetition_penalty=5.0), [top])
    s.choose(ro)
    np.testing.assert_array_equal(ro, original)
    s2 = SequenceSampler(Sampling(temperature=0.7, top_p=0.5, repetition_penalty=5.0, seed=0), [top])
    s2.choose(ro)
    np.testing.assert_array_equal(ro, original)


# ---------------------------------------------------------------- repetition penalty


def test_repetition_penalty_changes_greedy_choice_for_seen_top_token() -> None:
    x = np.abs(_logits(3)) + 0.1  # all positive, so the penalty divides
    order = np.argsort(x)
    top, second = int(order[-1]), int(order[-2])
    # Just enough to push the seen top logit below the runner-up.
    penalty = 1.01 * float(x[top]) / float(x[second])
    assert SequenceSampler(Sampling(repetition_penalty=penalty), []).choose(x) == top
    assert SequenceSampler(Sampling(repetition_penalty=penalty), [top]).choose(x) == second


def test_repetition_penalty_multiplies_negative_logits() -> None:
    x = -(np.abs(_logits(4)) + 0.1)  # all negative, so the penalty multiplies
    order = np.argsort(x)
    top, second = int(order[-1]), int(order[-2])
    penalty = 1.01 * float(x[second]) / float(x[top])
    assert SequenceSampler(Sampling(repetition_penalty=penalty), [top]).choose(x) == second


def test_repetition_penalty_covers_generated_tokens() -> None:
    x = np.abs(_logits(5)) + 0.1
    order = np.argsort(x)
    top, second = int(order[-1]), int(order[-2])
    s = SequenceSampler(Sampling(repetition_penalty=1.01 * float(x[top]) / float(x[second])), [])
    assert [s.choose(x), s.choose(x)] == [top, second]
    assert s.generated == [top, second]


def test_repetition_penalty_below_one_favours_seen_tokens() -> None:
    x = np.abs(_logits(6)) + 0.1
    top = int(np.argmax(x))
    low = int(np.argmin(x))
    penalty = 0.99 * float(x[low]) / float(x[top])  # divides, so the seen token rises above the top
    assert SequenceSampler(Sampling(repetition_penalty=penalty), [low]).choose(x) == low


@pytest.mark.parametrize("penalty", [0.5, 0.9, 1.1, 1.3, 3.0])
def test_repetition_penalty_greedy_matches_reference(penalty: float) -> None:
    rng = np.random.default_rng(int(penalty * 100))
    n = 200
    context = rng.integers(0, n, size=30).tolist()
    s = SequenceSampler(Sampling(repetition_penalty=penalty), context)
    seen = set(context)
    for _ in range(40):
        x = (rng.standard_normal(n) * 2).astype(np.float32)
        ref = x.copy()
        for t in seen:
            ref[t] = ref[t] / penalty if ref[t] > 0 else ref[t] * penalty
        token = s.choose(x)
        assert token == int(np.argmax(ref))
        seen.add(token)


def test_seen_set_grows_with_every_new_token() -> None:
    # A penalty this large sinks any seen positive logit below every unseen one, so
    # greedy must walk the logits in descending order, past the id buffer's first size.
    x = np.abs(_logits(18, 500)) + 0.1
    s = SequenceSampler(Sampling(repetition_penalty=1e6), [])
    steps = 300
    got = [s.choose(x) for _ in range(steps)]
    np.testing.assert_array_equal(got, np.argsort(-x, kind="stable")[:steps])


def test_context_ids_outside_vocabulary_are_ignored() -> None:
    x = _logits(7, 10)
    s = SequenceSampler(Sampling(repetition_penalty=2.0), [-1, 10, 10_000])
    assert s.choose(x) == int(np.argmax(x))


# ---------------------------------------------------------------- sampled


@pytest.mark.parametrize("seed", [0, 1, 2, None])
def test_top_k_one_equals_greedy(seed: int | None) -> None:
    x = _logits(8, VOCAB)
    context = [int(np.argmax(x))]
    greedy = SequenceSampler(Sampling(repetition_penalty=1.3), context)
    sampled = SequenceSampler(Sampling(temperature=1.5, top_k=1, repetition_penalty=1.3, seed=seed), context)
    for step in range(5):
        y = _logits(100 + step, VOCAB)
        assert sampled.choose(y) == greedy.choose(y)


def test_same_seed_reproduces_and_different_seed_differs() -> None:
    x = _logits(9, VOCAB, scale=0.01)  # near-uniform: every draw is nearly free
    a = _draws(Sampling(temperature=1.0, seed=1234), x, 50)
    b = _draws(Sampling(temperature=1.0, seed=1234), x, 50)
    c = _draws(Sampling(temperature=1.0, seed=1235), x, 50)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(set(a.tolist())) > 40, "near-uniform draws over 128k tokens should rarely repeat"


def test_same_seed_reproduces_with_top_p_and_penalty() -> None:
    def run(seed: int) -> list[int]:
        s = SequenceSampler(Sampling(temperature=0.8, top_p=0.9, repetition_penalty=1.2, seed=seed), [1, 2, 3])
        return [s.choose(_logits(step, 5000)) for step in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_tiny_top_p_picks_only_the_argmax() -> None:
    x = _logits(10, VOCAB)
    draws = _draws(Sampling(temperature=2.0, top_p=1e-9, seed=0), x, 200)
    assert set(draws.tolist()) == {int(np.argmax(x))}


def test_min_p_one_picks_only_max_probability_tokens() -> None:
    x = _logits(11, 5000)
    tied = [17, 999, 4321]
    x[tied] = x.max() + 1.0
    draws = _draws(Sampling(temperature=1.0, min_p=1.0, seed=3), x, 600)
    assert set(draws.tolist()) == set(tied), "each tied maximum should be drawn, nothing else"


def test_frequencies_match_softmax_at_temperature_one() -> None:
    x = np.array([1.0, 0.0, -0.5, 2.0], dtype=np.float32)
    expected = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    draws = _draws(Sampling(temperature=1.0, seed=42), x, 20_000)
    _assert_matches(draws, expected)


def test_higher_temperature_flattens() -> None:
    x = np.array([2.0, 1.0, 0.0, -1.0, -2.0], dtype=np.float32)
    cold = _frequencies(_draws(Sampling(temperature=0.5, seed=1), x, 5000), x.size)
    warm = _frequencies(_draws(Sampling(temperature=1.0, seed=1), x, 5000), x.size)
    hot = _frequencies(_draws(Sampling(temperature=3.0, seed=1), x, 5000), x.size)
    assert _entropy(cold) < _entropy(warm) < _entropy(hot)
    assert cold.argmax() == warm.argmax() == hot.argmax() == int(np.argmax(x))


@pytest.mark.parametrize(
    "params",
    [
        Sampling(temperature=0.7, top_k=5),
        Sampling(temperature=1.3, top_p=0.8),
        Sampling(temperature=1.0, min_p=0.2),
        Sampling(temperature=0.9, top_k=8, top_p=0.7, min_p=0.05),
        Sampling(temperature=2.0, top_p=0.95, min_p=0.3),
    ],
)
def test_warpers_match_reference_distribution(params: Sampling) -> None:
    x = _logits(12, 12, scale=1.5)
    x[[3, 9]] = x.max()  # tied best tokens, so that every setting maps values back to ids
    expected = _reference_probs(x, params)
    draws = _draws(msgspec.structs.replace(params, seed=99), x, 10_000)
    _assert_matches(draws, expected)


@pytest.mark.parametrize("params", [Sampling(temperature=1.0), Sampling(temperature=1.0, top_p=0.6)])
def test_large_vocabulary_matches_reference(params: Sampling) -> None:
    # Mass on a handful of tokens spread across the vocabulary, so draws cross block boundaries.
    x = np.full(20_000, -30.0, dtype=np.float32)
    hot = np.random.default_rng(13).choice(x.size, size=6, replace=False)
    x[hot] = np.linspace(0.0, 1.5, hot.size, dtype=np.float32)
    expected = _reference_probs(x, params)
    draws = _draws(msgspec.structs.replace(params, seed=5), x, 3000)
    _assert_matches(draws, expected)


def _reference_nucleus(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """Ids of the top-p nucleus by a full stable sort in float64, equal logits in id order."""
    order = np.argsort(-logits.astype(np.float64), kind="stable")
    probs = np.exp((logits[order].astype(np.float64) - logits.max()) / temperature)
    cum = np.cumsum(probs / probs.sum())
    return order[: int(np.searchsorted(cum, top_p)) + 1]


def _nucleus_ids(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """Ids `_nucleus` keeps, whichever of its forms (short sorted copy, or masked weights) it returns."""
    m = float(logits.max())
    w = _weights(logits, m, temperature, np.empty(logits.size))
    vals, kept = _nucleus(logits, w, m, temperature, top_p)
    if vals is logits:
        return np.flatnonzero(kept > 0)
    assert np.all(np.diff(vals) <= 0), "the short form is sorted best first"
    # Equal logits join in id order, so the r-th copy of a value is its r-th id.
    ids = [int(np.flatnonzero(logits == v)[int(np.count_nonzero(vals[:i] == v))]) for i, v in enumerate(vals)]
    return np.array(ids)


@pytest.mark.parametrize(
    ("n", "scale", "top_p"),
    [
        (50, 1.0, 0.5),  # short vocabulary: one small sort
        (4 * _NUCLEUS_TRY + 1, 3.0, 0.9),  # peaked: the best _NUCLEUS_TRY hold the nucleus
        (VOCAB, 3.0, 0.9),
        (VOCAB, 1.0, 0.9),  # flat: the nucleus runs past _NUCLEUS_TRY, bucket path
        (VOCAB, 0.2, 0.3),
        (VOCAB, 1.0, 1e-9),
    ],
)
def test_nucleus_matches_full_sort(n: int, scale: float, top_p: float) -> None:
    for temperature in (0.8, 1.5):
        x = _logits(16, n, scale)
        x[::97] = np.round(x[::97], 1)  # many equal logits
        x[::89] = -np.inf
        # Tie the tokens ranked around the nucleus edge, so the cut falls inside a run of
        # equal logits and must take them in id order.
        edge = _reference_nucleus(x, temperature, top_p).size - 1
        order = np.argsort(-x, kind="stable")
        x[order[max(0, edge - 1) : edge + 6]] = x[order[edge]]
        expected = _reference_nucleus(x, temperature, top_p)
        tied = np.flatnonzero(x == x[expected[-1]])
        assert 0 < np.isin(tied, expected).sum() < tied.size, "the edge must cut through the tie"
        got = _nucleus_ids(x, temperature, top_p)
        np.testing.assert_array_equal(np.sort(got), np.sort(expected))


def test_flat_top_p_draws_stay_in_nucleus() -> None:
    x = _logits(17, VOCAB)
    nucleus = _reference_nucleus(x, 0.8, 0.5)
    assert nucleus.size > _NUCLEUS_TRY, "the row must be flat enough to take the bucket path"
    draws = _draws(Sampling(temperature=0.8, top_p=0.5, seed=4), x, 300)
    assert np.isin(draws, nucleus).all()
    # A draw outside would be likely: half the mass lies beyond the nucleus.
    assert len(set(draws.tolist())) > 250


@pytest.mark.parametrize("n", [1, 5, 4096, 4097, 50_000])
def test_first_reaching_matches_cumsum_search(n: int) -> None:
    rng = np.random.default_rng(n)
    w = rng.random(n) * (rng.random(n) < 0.7)  # some zero weights
    w[0] = 1.0
    cum = np.cumsum(w)
    for u in [0.0, 1e-12, 0.3, 0.5, 0.999999, rng.random()]:
        target = u * cum[-1]
        assert _first_reaching(w, target, strict=True) == min(int(np.searchsorted(cum, target, "right")), n - 1)
        assert w[_first_reaching(w, target, strict=True)] > 0
        assert _first_reaching(w, target) == int(np.searchsorted(cum, target, "left"))


# ---------------------------------------------------------------- non-finite logits


@pytest.mark.parametrize(
    "params", [Sampling(), Sampling(temperature=1.0, seed=0), Sampling(temperature=1.0, top_p=0.9, seed=0)]
)
def test_nan_logits_are_never_chosen(params: Sampling) -> None:
    x = _logits(14, 1000)
    nan_at = np.random.default_rng(14).choice(1000, size=300, replace=False)
    x[nan_at] = np.nan
    draws = _draws(params, x, 300)
    assert not np.isin(draws, nan_at).any()
    if params.temperature == 0:
        assert set(draws.tolist()) == {int(np.nanargmax(x))}


@pytest.mark.parametrize(
    "params", [Sampling(), Sampling(temperature=1.0, seed=0), Sampling(temperature=1.0, top_k=3, seed=0)]
)
@pytest.mark.parametrize("fill", [np.nan, -np.inf])
def test_all_unusable_logits_fall_back_to_raw_argmax(params: Sampling, fill: float) -> None:
    x = np.full(50, fill, dtype=np.float32)
    assert SequenceSampler(params, []).choose(x) == int(np.argmax(x))


def test_positive_infinity_shares_the_mass() -> None:
    x = _logits(15, 100)
    x[[4, 40]] = np.inf
    draws = _draws(Sampling(temperature=1.0, seed=0), x, 400)
    assert set(draws.tolist()) == {4, 40}


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes(dtype: type) -> None:
    x: np.ndarray = _logits(19, 3000).astype(dtype)
    assert SequenceSampler(Sampling(), []).choose(x) == int(np.argmax(x))
    assert SequenceSampler(Sampling(temperature=1.0, top_k=1, seed=0), []).choose(x) == int(np.argmax(x))
    draws = _draws(Sampling(temperature=0.5, top_p=0.5, seed=0), x, 50)
    assert np.isin(draws, _reference_nucleus(x, 0.5, 0.5)).all()


def test_temperature_too_small_for_float32_is_greedy() -> None:
    assert SequenceSampler(Sampling(temperature=1e-50), []).greedy
    assert not SequenceSampler(Sampling(temperature=1e-30), []).greedy


def test_threads_do_not_share_scratch_state() -> None:
    # Samplers on different threads (and different vocabulary sizes) must give exactly
    # what each gives alone.
    def run(seed: int) -> list[int]:
        s = SequenceSampler(Sampling(temperature=0.9, top_k=500, top_p=0.9, min_p=0.01, seed=seed), [])
        return [s.choose(_logits(step, 20_000 + 1000 * seed)) for step in range(30)]

    alone = [run(seed) for seed in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(run, range(4)))
    assert together == alone


def test_bad_logits_shape_is_rejected() -> None:
    s = SequenceSampler(Sampling(), [])
    with pytest.raises(ValueError, match="1-D"):
        s.choose(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        s.choose(np.zeros(0, dtype=np.float32))


# ---------------------------------------------------------------- validate


def test_validate_accepts_defaults_and_typical_settings() -> None:
    assert validate(Sampling()) is None
    assert validate(Sampling(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1, seed=0)) is None
    assert validate(Sampling(top_p=1.0, min_p=1.0, stop=["x" * MAX_STOP_CHARS] * MAX_STOP_STRINGS)) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", math.inf),
        ("temperature", math.nan),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.nan),
        ("min_p", -0.01),
        ("min_p", 1.01),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", math.inf),
        ("max_tokens", 0),
        ("seed", -1),
        ("stop", ["x"] * (MAX_STOP_STRINGS + 1)),
        ("stop", ["ok", ""]),
        ("stop", ["x" * (MAX_STOP_CHARS + 1)]),
    ],
)
def test_validate_rejects_each_bad_field(field: str, value: object) -> None:
    bad = validate(msgspec.structs.replace(Sampling(), **{field: value}))
    assert bad is not None
    assert bad.param.startswith(f"sampling.{field}") and bad.message.startswith(bad.param)
    assert repr(value) in bad.message or field == "stop"


def test_validate_message_reads_as_documented() -> None:
    assert validate(Sampling(top_p=1.5)) == ("sampling.top_p", "sampling.top_p must be in (0, 1], got 1.5")
    assert validate(Sampling(stop=["ok", ""])) == (
        "sampling.stop[1]",
        f"sampling.stop[1] must be a non-empty string of at most {MAX_STOP_CHARS} characters, got 0 characters",
    )
