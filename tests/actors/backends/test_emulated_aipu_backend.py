"""The aipu backend's pieces in-process, against the emulated card: embeddings files
(mapped, not inflated), the adapter's errors, the emulator's card-like behaviour."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from axchat.actors.backends.aipu import emulator as emu
from axchat.actors.backends.aipu import runtime as rt
from axchat.actors.backends.aipu.backend import AipuBackend, reply_reserve_for
from axchat.actors.backends.aipu.embeddings import extract_embeddings, load_embeddings, write_embeddings
from axchat.actors.backends.aipu.emulator import LOCK_DIR_ENV, EmulatorError
from axchat.actors.backends.base import ModelLoadError
from axchat.actors.backends.load_options import LoadOptions


@pytest.fixture
def card_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private lock directory: this test's emulated card, nobody else's."""
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def backend(card_dir: Path, tiny_model_dir: Path) -> Iterator[AipuBackend]:
    b = AipuBackend.load(str(tiny_model_dir), LoadOptions(aipu_runtime="emulator", context=64))
    yield b
    b.close()


@pytest.mark.parametrize(("name", "compressed", "mapped"), [("e.npz", False, True), ("e.npy", False, True), ("e.npz", True, False)])
def test_emulated_aipu_embeddings_round_trip(tmp_path: Path, name: str, compressed: bool, mapped: bool) -> None:
    matrix = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    path = write_embeddings(matrix, tmp_path / name, compressed=compressed)
    loaded = load_embeddings(path)
    assert isinstance(loaded, np.memmap) is mapped
    assert loaded.dtype == np.float16 and np.array_equal(loaded, matrix.astype(np.float16))
    if path.suffix == ".npz":
        with np.load(path) as npz:  # the SDK's layout, readable by plain numpy
            assert set(npz.files) == {"embeddings", "vocab_size", "embedding_dim", "dtype"}
            assert int(npz["vocab_size"]) == 300 and int(npz["embedding_dim"]) == 16 and str(npz["dtype"]) == "float16"


def test_emulated_aipu_extract_embeddings_matches_the_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = extract_embeddings(str(tiny_model_dir), tmp_path / "tiny.npz")
    weight = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight.detach().numpy()
    loaded = load_embeddings(out)
    assert isinstance(loaded, np.memmap)
    assert np.array_equal(loaded, weight.astype(np.float16))


def test_emulated_aipu_extract_embeddings_command(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "sdk.npz"
    done = subprocess.run(
        [sys.executable, "-m", "axchat", "extract-embeddings", str(tiny_model_dir), str(out), "--compressed"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1000 x 64" in done.stdout
    assert not isinstance(load_embeddings(out), np.memmap)  # compressed: inflated, and logged


def test_emulated_aipu_capabilities_and_reserve(backend: AipuBackend) -> None:
    caps = backend.capabilities
    assert (caps.max_batch, caps.kv_survives_switch, caps.prefill_chunk, caps.prefix_cache) == (1, False, None, False)
    assert backend.info.backend == "aipu" and backend.info.context_length == 64
    assert backend.info.reply_reserve == 64
    assert [reply_reserve_for(c) for c in (512, 1024, 2048)] == [64, 128, 128]


def test_emulated_aipu_one_sequence_on_the_card(backend: AipuBackend) -> None:
    first = backend.prefill(1, [5, 6, 7])
    assert first.dtype == np.float32 and first.shape == (1000,)
    assert backend.decode([1], [int(first.argmax())]).shape == (1, 1000)
    backend.prefill(2, [8, 9])  # the card restarts: sequence 1's KV is gone
    with pytest.raises(RuntimeError, match="holds sequence 2"):
        backend.decode([1], [3])
    with pytest.raises(ValueError, match="at least two tokens"):
        backend.prefill(3, [4])
    backend.release(2)
    assert backend.live_sequences() == 0


def test_emulated_aipu_restart_gives_the_same_logits(backend: AipuBackend) -> None:
    a = backend.prefill(1, [5, 6, 7, 8])
    backend.decode([1], [9])
    b = backend.prefill(2, [5, 6, 7, 8])
    assert np.array_equal(a, b)


def test_emulated_aipu_static_context(backend: AipuBackend) -> None:
    backend.prefill(1, list(range(1, 64)))  # positions 0..62
    backend.decode([1], [5])  # position 63: the last one
    with pytest.raises(RuntimeError, match="static context of 64"):
        backend.decode([1], [5])


def test_emulated_aipu_card_refuses_bad_shapes_and_positions(card_dir: Path, tiny_model_dir: Path) -> None:
    ctx = emu.Context(static_context=8)
    try:
        conn = ctx.device_connect(ctx.list_devices()[0], num_sub_devices=4)
        inst = conn.load_model_instance(ctx.load_model(str(tiny_model_dir)))
        out = np.zeros(1000, np.int8)
        with pytest.raises(EmulatorError, match="int8"):
            inst.run([np.zeros((2, 64), np.float16)], [out])
        inst.run([np.zeros((8, 128), np.int8)], [out])
        with pytest.raises(EmulatorError, match="past the static context"):
            inst.run([np.zeros((1, 128), np.int8)], [out])
    finally:
        ctx.release()


HOLD_ONE_SUB_DEVICE = (
    "from axchat.actors.backends.aipu import emulator as e; c = e.Context(); "
    "c.device_connect(c.list_devices()[0], num_sub_devices={n})"
)


def test_emulated_aipu_sub_devices_are_reserved_across_processes(card_dir: Path) -> None:
    ctx = emu.Context()
    card = ctx.list_devices()[0]
    held = ctx.device_connect(card, num_sub_devices=3)
    try:
        # One of four is free: another process may take it, but not two.
        other = subprocess.run(
            [sys.executable, "-c", HOLD_ONE_SUB_DEVICE.format(n=2)], capture_output=True, text=True, timeout=60
        )
        assert other.returncode != 0 and "DeviceInUse" in other.stderr
        one = subprocess.run(
            [sys.executable, "-c", HOLD_ONE_SUB_DEVICE.format(n=1)], capture_output=True, text=True, timeout=60
        )
        assert one.returncode == 0, one.stderr
        with pytest.raises(emu.DeviceInUse, match="4 sub-devices asked, 1 free"):
            ctx.device_connect(card, num_sub_devices=4)
    finally:
        held.release()
    ctx.device_connect(card, num_sub_devices=4).release()  # all free again once released


def test_emulated_aipu_errors_are_one_line(
    card_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(rt.BadDeviceSelector, match="metis-9:9:9"):
        AipuBackend.load(str(tiny_model_dir), LoadOptions(aipu_runtime="emulator", aipu_device="metis-9:9:9"))
    with pytest.raises(ModelLoadError, match="not a precompiled Metis model"):
        AipuBackend.load("no-such-model", LoadOptions(aipu_runtime="real"))
    name = "llama-3-1-8b-1024-4core-static"
    try:
        import axelera  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(rt.SdkMissing, match="install the Voyager SDK"):
            AipuBackend.load(name, LoadOptions(aipu_runtime="real", build_root=str(tmp_path)))
    # The rest runs the catalog path on the emulated SDK.
    with pytest.raises(rt.FilesMissing, match=rf"model\.json; fetch it with the Voyager SDK: `axllm {name}` \(1\.5\)"):
        AipuBackend.load(name, LoadOptions(aipu_runtime="emulator", build_root=str(tmp_path)))
    (tmp_path / name / "model").mkdir(parents=True)
    (tmp_path / name / "model" / "model.json").write_text("{}")
    with pytest.raises(rt.FilesMissing, match=rf"`\./inference_llm\.py {name} --prompt hi` \(1\.3/1\.4\)"):
        AipuBackend.load(name, LoadOptions(aipu_runtime="emulator", build_root=str(tmp_path)))
    errors = (
        rt.SdkMissing(),
        rt.NoCard(),
        rt.CardInUse(["metis-0:1:0"]),
        rt.CardInUse(["metis-0:1:0", "metis-0:3:0"]),
        rt.FilesMissing("x", "/y"),
        rt.CardTooSmall("m", 16, [("metis-0:1:0", 4.0)]),
        rt.BadDeviceSelector("7", "out of range"),
    )
    for exc in errors:
        assert "\n" not in str(exc) and str(exc)
