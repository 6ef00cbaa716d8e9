"""The aipu backend against the facts of the Voyager SDK, on the emulated card (no card
can run here): catalog models from a build tree, the tokenizer from that tree offline,
four sub-devices, card memory from `max_memory`, card selection and a busy card falling
through, raw int8 logits and dequantisation, end-of-turn ids, `triton_trace` temperature."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from axchat.actors.backends.aipu import emulator as emu
from axchat.actors.backends.aipu import runtime as rt
from axchat.actors.backends.aipu.backend import AipuBackend
from axchat.actors.backends.aipu.build_tree import TOKENIZER_MARKER, tokenizer_source
from axchat.actors.backends.aipu.cards import SELECTOR_ENV, select_cards
from axchat.actors.backends.aipu.embeddings import extract_embeddings
from axchat.actors.backends.aipu.temperature import CoreTemperatureProbe, hottest_core_c
from axchat.actors.backends.load_options import LoadOptions
from axchat.actors.tokenizer import end_of_turn_ids, load_tokenizer
from axchat.models.aipu_catalog import CATALOG

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = "llama-3-2-3b-1024-4core-static"  # 4 GB in the SDK's YAML
BIG = "llama-3-1-8b-1024-4core-static"  # 16 GB
PHI3_512 = "phi3-mini-512-static"  # compiled for 1 core
VELVET = "velvet-2b-1024-4core-static"
BUILT = (SMALL, BIG, PHI3_512, VELVET)


@pytest.fixture(scope="module")
def build_root(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An emulated SDK build tree: each model's compiled stand-in and embeddings, and
    the extracted tokenizer archives, all from the tiny model."""
    root = tmp_path_factory.mktemp("build")
    embeddings = extract_embeddings(str(tiny_model_dir), root / "tiny-embeddings.npz")
    for name in BUILT:
        entry = CATALOG[name]
        emu.write_build_tree(
            root,
            name,
            tiny_model_dir,
            context=entry.context,
            tokenizer_dir_name=entry.tokenizer_dir_name,
            embeddings_from=embeddings,
        )
    return root


@pytest.fixture
def cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Private sub-device locks and no selector from the environment; the test sets the cards."""
    monkeypatch.setenv(emu.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv(SELECTOR_ENV, raising=False)
    monkeypatch.delenv(emu.LOGITS_ENV, raising=False)
    monkeypatch.setenv(emu.CARDS_ENV, "metis-0:1:0=16")
    yield monkeypatch


def load(name: str, build_root: Path, aipu_device: str | None = None) -> AipuBackend:
    options = LoadOptions(aipu_runtime="emulator", build_root=str(build_root), aipu_device=aipu_device)
    return AipuBackend.load(name, options)


# ------------------------------------------------------------------ 1. the tokenizer


def test_emulated_aipu_tokenizer_from_the_build_tree_offline(
    build_root: Path, cards: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the gated hub id would fail
    entry = CATALOG[SMALL]
    extracted = build_root / "tokenizers" / "meta-llama_Llama-3.2-3B-Instruct"
    assert (extracted / TOKENIZER_MARKER).is_file()
    backend = load(SMALL, build_root)
    try:
        assert backend.info.tokenizer == str(extracted)
        tokenizer = load_tokenizer(backend.info.tokenizer)
        assert tokenizer.encode("hello there", add_special_tokens=False)
    finally:
        backend.close()
    # The seed's order: --tokenizer-dir first, then the build tree, only then the hub.
    assert tokenizer_source(build_root, entry, str(tmp_path)) == str(tmp_path)
    assert tokenizer_source(tmp_path, entry) == "meta-llama/Llama-3.2-3B-Instruct"
    with pytest.raises(rt.FilesMissing, match="tokenizer directory"):
        tokenizer_source(build_root, entry, str(tmp_path / "absent"))


# ------------------------------------------------------------------ 2. end-of-turn ids


def with_marker(tokenizer_dir: Path, out: Path, marker: str) -> Path:
    """A copy of the tiny tokenizer whose special token `<|pad|>` (id 3) is renamed `marker`."""
    shutil.copytree(tokenizer_dir, out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = out / name
        path.write_text(path.read_text().replace('"<|pad|>"', json.dumps(marker)))
    return out


@pytest.mark.parametrize("marker", ["<|end|>", "<|eot_id|>"])
def test_emulated_aipu_end_of_turn_ids_include_the_marker(tiny_model_dir: Path, tmp_path: Path, marker: str) -> None:
    tokenizer = load_tokenizer(str(with_marker(tiny_model_dir, tmp_path / "tok", marker)))
    assert tokenizer.token_id(marker) == 3
    assert end_of_turn_ids(tokenizer) == {tokenizer.eos_token_id, 3}
    assert end_of_turn_ids(load_tokenizer(str(tiny_model_dir))) == {tokenizer.eos_token_id}


# ------------------------------------------------------------------ 3. sub-devices


def test_emulated_aipu_connects_with_all_four_sub_devices(build_root: Path, cards: pytest.MonkeyPatch) -> None:
    assert CATALOG[PHI3_512].cores == 1  # compiled for one core, yet the seed takes four
    backend = load(PHI3_512, build_root)
    try:
        ctx = emu.Context()
        with pytest.raises(emu.DeviceInUse, match="1 sub-devices asked, 0 free"):
            ctx.device_connect(ctx.list_devices()[0], num_sub_devices=1)
    finally:
        backend.close()


# ------------------------------------------------------------------ 4. card memory


def test_emulated_aipu_card_memory_from_max_memory(build_root: Path, cards: pytest.MonkeyPatch) -> None:
    cards.setenv(emu.CARDS_ENV, "metis-0:1:0=4")
    for name in (SMALL, VELVET, PHI3_512):  # 4 GB models load on a 4 GB card
        load(name, build_root).close()
    with pytest.raises(rt.CardTooSmall) as refused:
        load(BIG, build_root)
    assert str(refused.value) == (f"{BIG} needs a card with at least 16 GB of memory; metis-0:1:0 has 4.0 GB")
    cards.setenv(emu.CARDS_ENV, "metis-0:1:0=4,metis-0:3:0=16")
    backend = load(BIG, build_root)  # the first card is too small: the second one
    try:
        assert backend.info.device == "metis-0:3:0 (emulated)"
    finally:
        backend.close()
    cards.setenv(emu.CARDS_ENV, "metis-0:1:0=0")  # not reported (early releases): not refused
    load(BIG, build_root).close()


def test_emulated_aipu_catalog_memory_and_names() -> None:
    need = {name: entry.ddr_gb for name, entry in CATALOG.items()}
    assert {n for n, gb in need.items() if gb == 4} == {
        "llama-3-2-1b-1024-4core-static",
        "llama-3-2-3b-1024-4core-static",
        "phi3-mini-512-static",
        "velvet-2b-1024-4core-static",
        "velvet-2b-1024-static",
    }
    assert {"llama-3-1-8b-1024-static", "phi3-mini-2048-static", "velvet-2b-1024-static"} <= set(CATALOG)


# ------------------------------------------------------------------ 5. cards: selection, busy


def test_emulated_aipu_card_selection(cards: pytest.MonkeyPatch) -> None:
    ctx = emu.Context(cards="metis-0:1:0=16,metis-0:3:0=16,metis-0:4:0=16")
    runtime = rt.SdkRuntime(emu, ctx, "emulator")
    listed = runtime.list_devices()
    names = lambda chosen: [c.name for c in chosen]  # noqa: E731
    assert names(select_cards(listed, None)) == ["metis-0:1:0", "metis-0:3:0", "metis-0:4:0"]
    assert names(select_cards(listed, "1")) == ["metis-0:3:0"]
    assert names(select_cards(listed, "metis-0:4:0")) == ["metis-0:4:0"]
    assert names(select_cards(listed, "2,metis-0:1:0")) == ["metis-0:4:0", "metis-0:1:0"]
    cards.setenv(SELECTOR_ENV, "1,2")
    assert names(select_cards(listed, None)) == ["metis-0:3:0", "metis-0:4:0"]
    assert names(select_cards(listed, "0")) == ["metis-0:1:0"]  # --aipu-device wins
    with pytest.raises(rt.BadDeviceSelector, match="index 3 is out of range"):
        select_cards(listed, "3")
    with pytest.raises(rt.BadDeviceSelector, match="no card named 'metis-9:9:9'"):
        select_cards(listed, "0,metis-9:9:9")


def test_emulated_aipu_busy_first_card_falls_through(build_root: Path, cards: pytest.MonkeyPatch) -> None:
    cards.setenv(emu.CARDS_ENV, "metis-0:1:0=16,metis-0:3:0=16")
    other = emu.Context()  # another process's hold, seen through the same locks
    first = other.list_devices()[0]
    held = other.device_connect(first, num_sub_devices=1)
    try:
        backend = load(SMALL, build_root)
        try:
            assert backend.info.device == "metis-0:3:0 (emulated)"
            with pytest.raises(rt.CardInUse, match="Metis cards metis-0:1:0, metis-0:3:0 are in use"):
                load(SMALL, build_root)
        finally:
            backend.close()
        with pytest.raises(rt.CardInUse, match="Metis card metis-0:1:0 is in use"):
            load(SMALL, build_root, aipu_device="0")
    finally:
        held.release()


# ------------------------------------------------------------------ 6. temperature


def test_emulated_aipu_temperature_from_recorded_triton_trace() -> None:
    lines = (FIXTURES / "triton_trace_slog.txt").read_text().splitlines()
    assert [hottest_core_c(line) for line in lines] == [35.0, 39.0, 44.0, 47.0, 48.0]
    assert hottest_core_c("[04:58:54.012,603] <inf> collector: started") is None


def test_emulated_aipu_temperature_probe_runs_the_sdk_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in `triton_trace` (no card here) that logs its arguments and, asked to
    stream, prints the recorded output and then blocks as the real one does."""
    calls = tmp_path / "calls"
    tool = tmp_path / "bin" / "triton_trace"
    tool.parent.mkdir()
    tool.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$*" in *--slog-level*) exit 0;; esac\n'
        f"cat {FIXTURES / 'triton_trace_slog.txt'}\n"
        "exec sleep 60\n"
    )
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    probe = CoreTemperatureProbe.start_if_available()
    assert probe is not None
    try:
        assert probe.wait_reading(20, lambda c: c == 48.0) == 48.0  # the last line's hottest sensor
    finally:
        probe.close()
    assert calls.read_text().splitlines() == [
        "--slog-level err",
        "--slog-level inf:collector",
        "--clear-buffer --slog",
        "--slog-level err",
    ]


# ------------------------------------------------------------------ 7. logits


def first_logits(build_root: Path) -> tuple[np.ndarray, tuple[float, int]]:
    """The logits after a three-token prompt, and the (scale, zero-point) the loaded
    model's output tensor reported to the backend."""
    backend = load(SMALL, build_root)
    try:
        reported = backend._instance.output_scale, backend._instance.output_zero_point
        return backend.prefill(1, [5, 6, 7]), reported
    finally:
        backend.close()


def test_emulated_aipu_raw_int8_logits_by_default(build_root: Path, cards: pytest.MonkeyPatch) -> None:
    logits, quantisation = first_logits(build_root)
    assert quantisation == (1.0, 0)
    assert np.array_equal(logits, np.rint(logits)) and logits.min() >= -128 and logits.max() <= 127
    assert np.ptp(logits) > 20  # the int8 range is used, not a few levels


def test_emulated_aipu_dequantises_with_scale_and_zero_point(build_root: Path, cards: pytest.MonkeyPatch) -> None:
    raw, _ = first_logits(build_root)
    cards.setenv(emu.LOGITS_ENV, "scaled:5")
    dequantised, (scale, zero_point) = first_logits(build_root)
    assert zero_point == 5 and scale != 1.0
    # The card wrote raw + 5 (clipped); the backend took the 5 off and applied the scale.
    expected = (np.clip(raw + 5, -128, 127) - 5) * np.float32(scale)
    assert np.allclose(dequantised, expected, rtol=1e-6)
    assert dequantised.argmax() == raw.argmax()


def test_emulated_aipu_card_time_waits_without_a_core(build_root: Path, cards: pytest.MonkeyPatch) -> None:
    """$AXCHAT_AIPU_EMULATOR_STEP_MS: each run lasts at least the card's time, spent
    asleep (neither the GIL nor a core held), so emulated cards overlap as real ones do."""
    with pytest.raises(emu.InvalidArgument, match=emu.STEP_MS_ENV):
        emu.card_time("fast")
    assert emu.card_time("100,2.5") == (0.1, 0.0025)
    cards.setenv(emu.STEP_MS_ENV, "400,10")
    backend = load(SMALL, build_root)
    try:
        wall, cpu = time.monotonic(), time.process_time()
        backend.prefill(1, [5, 6, 7])  # 400 + 3 x 10 ms
        backend.decode([1], [8])  # 400 ms
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    finally:
        backend.close()
    assert wall >= 0.83
    assert cpu < wall / 2  # the tiny model's own forward is a few ms; the rest was a sleep
