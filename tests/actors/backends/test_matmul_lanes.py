"""A linear layer split by output columns across lanes equals F.linear exactly, for the
shapes the lean forward uses; one-row matmuls of ordinary width are not split."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from axchat.actors.backends.matmul_lanes import SPLIT_ALWAYS_ROWS, Lanes


@pytest.fixture
def lanes():  # type: ignore[no-untyped-def]
    made = Lanes(3)
    yield made
    made.close()


@pytest.mark.parametrize(("shape", "out_features"), [((8, 96), 200), ((2, 5, 96), 200), ((1, 96), SPLIT_ALWAYS_ROWS)])
def test_split_linear_equals_f_linear(lanes: Lanes, shape: tuple[int, ...], out_features: int) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.randn(out_features, shape[-1])
    with torch.inference_mode():
        got = lanes.linear(x, w)
    assert got.shape == (*shape[:-1], out_features)
    assert torch.equal(got, F.linear(x, w))


def test_one_row_of_ordinary_width_stays_on_the_calling_thread(lanes: Lanes, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: set[str] = set()
    real_mm = torch.mm

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.add(threading.current_thread().name)
        return real_mm(*args, **kwargs)

    monkeypatch.setattr(torch, "mm", spy)
    x, w = torch.randn(1, 64), torch.randn(128, 64)
    with torch.inference_mode():
        assert torch.equal(lanes.linear(x, w), F.linear(x, w))
        assert seen == set()  # F.linear, not the split
        lanes.linear(torch.randn(4, 64), w)
    assert threading.current_thread().name in seen and any(name.startswith("axchat-lane") for name in seen)


def test_one_lane_is_plain_linear_and_bad_counts_are_refused() -> None:
    x, w = torch.randn(8, 32), torch.randn(64, 32)
    assert torch.equal(Lanes(1).linear(x, w), F.linear(x, w))
    with pytest.raises(ValueError, match="at least 1"):
        Lanes(0)
