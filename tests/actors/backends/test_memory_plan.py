"""The memory plan of a llama.cpp load: known before the weights are read, refused in one
line naming the figures and the option that lowers the largest part, and the KV budgets'
default share of available memory between its floor and ceiling."""

from __future__ import annotations

from pathlib import Path

import pytest

from axchat import host_memory
from axchat.actors.backends.base import ModelLoadError
from axchat.actors.backends.llamacpp import load
from axchat.actors.backends.llamacpp.memory_plan import HEADROOM_BYTES, MIB, MemoryPlan, refusal


def test_kv_budget_is_a_share_within_floor_and_ceiling() -> None:
    assert host_memory.default_kv_bytes(0) == host_memory.KV_FLOOR_BYTES
    assert host_memory.default_kv_bytes(1 << 40) == host_memory.KV_CEILING_BYTES
    middle = int((host_memory.KV_FLOOR_BYTES + host_memory.KV_CEILING_BYTES) / 2 / host_memory.KV_SHARE)
    assert host_memory.default_kv_bytes(middle) == int(middle * host_memory.KV_SHARE)


def test_available_memory_is_what_the_host_reports() -> None:
    import psutil

    assert 0 < host_memory.available_bytes() <= psutil.virtual_memory().total


@pytest.mark.parametrize(
    ("plan", "option"),
    [
        (MemoryPlan(900 * MIB, 10 * MIB, 10 * MIB, 10 * MIB), "--quant q4_k_m"),
        (MemoryPlan(10 * MIB, 900 * MIB, 10 * MIB, 10 * MIB), "--running-kv-mb"),
        (MemoryPlan(10 * MIB, 10 * MIB, 900 * MIB, 10 * MIB), "--prefix-cache-mb"),
    ],
)
def test_a_plan_over_the_available_memory_is_refused_naming_the_option(plan: MemoryPlan, option: str) -> None:
    why = refusal(plan, 512 * MIB, ctx_len=2048, running_set_by_context=False)
    assert why is not None and "\n" not in why
    assert f"needs {(plan.total_bytes + HEADROOM_BYTES) // MIB} MiB" in why and "512 MiB are available" in why
    assert option in why
    assert refusal(plan, plan.total_bytes + HEADROOM_BYTES, ctx_len=2048, running_set_by_context=False) is None


def test_running_kv_set_by_one_context_names_context() -> None:
    plan = MemoryPlan(10 * MIB, 900 * MIB, 0, 10 * MIB)
    why = refusal(plan, 512 * MIB, ctx_len=131072, running_set_by_context=True)
    assert why is not None and "--context" in why and "131072" in why


def test_the_load_refuses_before_reading_weights(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^the model needs \d+ MiB .* but 1 MiB are available; lower "):
        load.load(str(tiny_model_dir), quant="f32", threads=1, available_bytes=1 * MIB)


def test_the_plan_is_in_the_backend_info(tiny_model_dir: Path) -> None:
    backend = load.load(str(tiny_model_dir), quant="f32", threads=1, prefix_cache_bytes=4 * MIB, running_kv_bytes=8 * MIB)
    try:
        info = backend.info
        gguf = load.gguf_for(tiny_model_dir, "f32", threads=1)
        assert info.weights_bytes == gguf.stat().st_size
        assert 0 < info.prefix_kv_bytes <= 4 * MIB
        assert info.running_kv_bytes > 0
    finally:
        backend.close()
