"""The backend registry: a name gives its engine, and naming one loads no engine's
libraries until it loads a model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from axchat.actors.backends import BackendInfo, LoadOptions, ModelLoadError, registry


def test_an_unknown_backend_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match="unknown backend 'tpu'; available: llamacpp, torch, aipu"):
        registry.engine("tpu")


def test_choosing_an_engine_imports_none_of_the_engine_libraries() -> None:
    """(llama.cpp's `unavailable` does import llama_cpp's C API: that is how it finds out.)"""
    script = (
        "import sys; from axchat.actors.backends import registry\n"
        "engines = [registry.engine(name) for name in registry.BACKENDS]\n"
        "registry.engine('torch').unavailable(); registry.engine('aipu').unavailable()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'llama_cpp', 'axelera') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_reload_keeps_what_each_engine_measured_at_start_up() -> None:
    asked = LoadOptions(dtype="auto", threads=None, context=128)
    torch_info = BackendInfo(backend="torch", model="m", device="cpu", dtype="bfloat16", context_length=128,
                             vocab_size=10, threads=2, lanes=2)
    kept = registry.engine("torch").reload_options(asked, torch_info)
    assert (kept.dtype, kept.threads, kept.lanes, kept.context) == ("bfloat16", 2, 2, 128)
    llamacpp_info = BackendInfo(backend="llamacpp", model="m", device="cpu", dtype="q8_0", context_length=128,
                                vocab_size=10, threads=1)
    kept = registry.engine("llamacpp").reload_options(asked, llamacpp_info)
    assert (kept.dtype, kept.threads, kept.lanes) == ("auto", 1, None)
    aipu_info = BackendInfo(backend="aipu", model="m", device="metis-0:1:0", dtype="int8", context_length=128,
                            vocab_size=10)
    assert registry.engine("aipu").reload_options(asked, aipu_info) == asked


def test_llama_cpp_is_usable_with_its_c_api_alone_and_completes_on_first_other_use() -> None:
    """The daemon's check imports only llama-cpp-python's C API (not its high-level
    Llama class, chat formats and disk cache); asking the package for anything else
    still gives it."""
    script = (
        "import sys; from axchat.actors.backends import llamacpp\n"
        "assert llamacpp.unavailable() is None\n"
        "import llama_cpp; llama_cpp.llama_backend_init()\n"
        "print(sorted(m for m in ('llama_cpp.llama', 'diskcache', 'sqlite3', 'jinja2') if m in sys.modules))\n"
        "from llama_cpp import Llama\n"
        "print(Llama.__name__, llama_cpp.__version__ == __import__('importlib.metadata').metadata.version('llama-cpp-python'))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "Llama True"], out.stderr
