"""The prompt chunk chosen at load: about one full-batch decode step's worth of prompt."""

from __future__ import annotations

import pytest

from axchat.actors.backends.torch_engine.decode_tuning import CHUNK_MAX, CHUNK_MIN, CHUNK_STEP, PROBE_CHUNK, chunk_for


@pytest.mark.parametrize(
    ("batch_step_ms", "chunk_ms"),
    [(186.0, 313.0), (120.0, 64.0), (40.0, 900.0), (5.0, 2.0), (0.8, 0.3)],
)
def test_a_chunk_costs_about_one_batch_step(batch_step_ms: float, chunk_ms: float) -> None:
    chunk = chunk_for(batch_step_ms, chunk_ms)
    per_token = chunk_ms / PROBE_CHUNK
    assert CHUNK_MIN <= chunk <= CHUNK_MAX and chunk % CHUNK_STEP == 0
    if CHUNK_MIN < chunk < CHUNK_MAX:
        # As long as a step at most, and within one rounding step of it.
        assert chunk * per_token <= batch_step_ms < (chunk + CHUNK_STEP) * per_token
    elif chunk == CHUNK_MIN:
        assert (CHUNK_MIN + CHUNK_STEP) * per_token > batch_step_ms
    else:
        assert CHUNK_MAX * per_token <= batch_step_ms


def test_a_slower_prompt_gets_smaller_chunks() -> None:
    assert chunk_for(186.0, 313.0) < chunk_for(186.0, 100.0) <= chunk_for(186.0, 30.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")])
def test_unmeasured_timings_keep_the_largest_chunk(bad: float) -> None:
    assert chunk_for(bad, 10.0) == CHUNK_MAX and chunk_for(100.0, bad) == CHUNK_MAX


def test_plans_measured_at_load() -> None:
    from axchat.actors.backends.torch_engine.decode_tuning import Plan, plans

    # Two cores: both in one pool, one, or one thread per lane splitting each matmul.
    assert plans(2, lanes=True) == [Plan(2), Plan(1), Plan(1, 2)]
    assert plans(6, lanes=False) == [Plan(6), Plan(3)]  # on a GPU, or compiled
    assert plans(1, lanes=True) == [Plan(1)]
    assert str(Plan(1, 2)) == "2 lanes of 1 thread" and str(Plan(4)) == "4 threads" and str(Plan(1)) == "1 thread"
