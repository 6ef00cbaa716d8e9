"""A linear layer split by output columns across lanes equals F.linear exactly, for the
shapes the lean forward uses; one-row matmuls of ordinary width and small matmuls are
not split."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from axchat.actors.backends.torch_engine.matmul_lanes import SPLIT_ALWAYS_ROWS, Lanes


@pytest.fixture
def lanes():  # type: ignore[no-untyped-def]
    # As the lanes plan runs it: one intra-op thread on the calling thread too. (With
    # more, MKL may split a matmul's reduction, and the unsplit result is not the
    # one-thread result either.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    made = Lanes(3)
    yield made
    made.close()
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("shape", "out_features"), [((8, 192), 500), ((2, 5, 192), 300), ((1, 96), SPLIT_ALWAYS_ROWS), ((3, 8), 40)]
)
def test_split_linear_equals_f_linear(lanes: Lanes, shape: tuple[int, ...], out_features: int) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.randn(out_features, shape[-1])
    with torch.inference_mode():
        got = lanes.linear(x, w)
    assert got.shape == (*shape[:-1], out_features)
    assert torch.equal(got, F.linear(x, w))


def test_one_row_or_a_small_matmul_stays_on_the_calling_thread(lanes: Lanes, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: set[str] = set()
    real_mm = torch.mm

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.add(threading.current_thread().name)
        return real_mm(*args, **kwargs)

    monkeypatch.setattr(torch, "mm", spy)
    x, w = torch.randn(1, 256), torch.randn(1024, 256)
    with torch.inference_mode():
        assert torch.equal(lanes.linear(x, w), F.linear(x, w))
        assert torch.equal(lanes.linear(x[:, :8].expand(2, 8), w[:, :8]), F.linear(x[:, :8].expand(2, 8), w[:, :8]))
        assert seen == set()  # F.linear both times, not the split
        lanes.linear(torch.randn(4, 256), w)
    assert threading.current_thread().name in seen and any(name.startswith("axchat-lane") for name in seen)


def test_one_lane_is_plain_linear_and_bad_counts_are_refused() -> None:
    x, w = torch.randn(8, 32), torch.randn(64, 32)
    assert torch.equal(Lanes(1).linear(x, w), F.linear(x, w))
    with pytest.raises(ValueError, match="at least 1"):
        Lanes(0)


def test_map_runs_the_first_part_here_and_the_rest_on_helpers_in_order(lanes: Lanes) -> None:
    def where(i: int) -> tuple[int, str]:
        return i, threading.current_thread().name

    got = lanes.map(where, [(0,), (1,), (2,)])
    assert [i for i, _ in got] == [0, 1, 2]
    assert got[0][1] == threading.current_thread().name
    assert all(name.startswith("axchat-lane") for _, name in got[1:])
    assert lanes.bounds(10) == [(0, 4), (4, 8), (8, 10)] and lanes.bounds(100, 16) == [(0, 48), (48, 96), (96, 100)]
    with pytest.raises(ValueError, match="4 parts for 3 lanes"):
        lanes.map(where, [(i,) for i in range(4)])
