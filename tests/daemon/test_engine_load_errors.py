"""What libllama refuses at load is one line, `ModelLoadError`, and a daemon that cannot
use llama.cpp stops saying so: it never runs the model on torch instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import short_socket_dir

from axchat.actors.backends.base import ModelLoadError
from axchat.actors.backends.llamacpp import gguf_cache, load

NO_LLAMA = str(Path(__file__).resolve().parent / "no_llama_cpp")


def serve(model: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    sock = short_socket_dir() / "d.sock"
    return subprocess.run(
        [sys.executable, "-m", "axchat", "serve", "--model", str(model), "--socket", str(sock)],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def truncated_base(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model whose cached f32 GGUF (what q8_0 is quantized from) lost
    its second half, as a full disk or a killed conversion leaves it."""
    model = tmp_path / "half-written"
    shutil.copytree(tiny_model_dir, model)
    base = load.gguf_for(model, "f32", threads=1)
    data = base.read_bytes()
    base.write_bytes(data[: len(data) // 2])
    assert not gguf_cache.cached_path(model, "q8_0").exists()
    return model


def test_a_quantize_that_fails_is_one_load_error_line(truncated_base: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load.load(str(truncated_base), threads=1)  # the default weight type: q8_0
    message = str(caught.value)
    assert message.startswith("cannot quantize half-written to q8_0: llama_model_quantize") and "\n" not in message
    assert not gguf_cache.cached_path(truncated_base, "q8_0").exists()  # nothing half-made is kept


def test_the_daemon_exits_with_that_line_not_a_traceback(truncated_base: Path) -> None:
    done = serve(truncated_base)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: cannot quantize half-written to q8_0" in done.stderr.splitlines()[-1], done.stderr


def test_without_a_usable_llama_cpp_the_daemon_stops_and_never_runs_torch(tiny_model_dir: Path) -> None:
    done = serve(tiny_model_dir, {"PYTHONPATH": NO_LLAMA})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert "llama-cpp-python is not usable (OSError: libllama.so: cannot open shared object file" in last, done.stderr
    assert "`make venv` builds it" in last and "--backend torch" in last
    assert "ready:" not in done.stderr and not any("torch" in line for line in done.stderr.splitlines()[:-1])
