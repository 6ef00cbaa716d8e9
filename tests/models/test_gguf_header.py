"""Crafted GGUF headers are one line from `axchat models`, `axchat serve --check` and the
daemon, at once: no MemoryError, OverflowError or RecursionError, no read or seek the
size of the claim. A real header still reads."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import short_socket_dir

from axchat.models import gguf_header

RUN_TIMEOUT_S = 60  # each run: a hang or a multi-GB read is a failure, not a stuck suite


def _text(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def _gguf(n_kv: int, body: bytes, n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


_ARCH = _text(b"general.architecture") + struct.pack("<I", 8) + _text(b"llama")
_UINT32, _STRING, _ARRAY = 4, 8, 9

# name -> (file bytes, what the one line says)
CRAFTED = {
    "huge-string": (
        _gguf(1, _text(b"general.architecture") + struct.pack("<IQ", _STRING, 1 << 62) + b"llama"),
        "a string of 4611686018427387904 bytes at byte 56 runs past the end of the file (69 bytes)",
    ),
    "huge-array": (
        _gguf(2, _text(b"tokenizer.ggml.scores") + struct.pack("<IIQ", _ARRAY, _UINT32, 1 << 62) + _ARCH),
        "an array of 4611686018427387904 elements at byte 61 runs past the end of the file",
    ),
    "deep-arrays": (
        _gguf(1, _text(b"nested") + struct.pack("<I", _ARRAY) + struct.pack("<IQ", _ARRAY, 1) * 50_000 + struct.pack("<IQ", _UINT32, 0)),
        "arrays nested more than 4 deep",
    ),
    "claims-more": (
        _gguf(1 << 40, _ARCH, n_tensors=1 << 40),
        "the header claims 1099511627776 keys and 1099511627776 tensors, more than the file's",
    ),
}


def axchat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axchat", *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip


@pytest.fixture(params=list(CRAFTED))
def crafted(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A crafted file in a model store under tmp_path, and what its line must say."""
    data, why = CRAFTED[request.param]
    path = tmp_path / "axchat" / "models" / f"{request.param}.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path, why


def test_axchat_models_lists_the_rest_and_says_in_one_line_why_not_that_one(crafted: tuple[Path, str], tmp_path: Path) -> None:
    path, why = crafted
    done = axchat("models", env={"XDG_DATA_HOME": str(tmp_path)})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"axchat models: {path.stem}: {path}: ") and why in lines[0], done.stderr
    assert "axchat-mini" in done.stdout and f"{path.stem} " in done.stdout  # the listing is all there


def test_serve_check_says_in_one_line_why(crafted: tuple[Path, str]) -> None:
    path, why = crafted
    done = axchat("serve", "--check", "--model", str(path), "--socket", str(short_socket_dir() / "d.sock"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(f"axchat serve: error: {path}: "), done.stderr
    assert why in done.stderr


def test_the_daemon_refuses_it_in_one_load_error_line(crafted: tuple[Path, str]) -> None:
    path, why = crafted
    done = axchat("serve", "--model", str(path), "--socket", str(short_socket_dir() / "d.sock"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"axchat serve: error: {path}: ") and why in last, done.stderr


def test_a_real_header_still_reads(llamacpp_f32_gguf: Path) -> None:
    facts = gguf_header.read_facts(llamacpp_f32_gguf)
    assert facts["general.architecture"] == "llama" and isinstance(facts["llama.context_length"], int)
