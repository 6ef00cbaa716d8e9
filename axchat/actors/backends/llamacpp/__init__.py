"""The CPU engine: llama.cpp (through llama-cpp-python's C API) behind the device
interface. Importing this package imports neither llama_cpp nor torch."""

from __future__ import annotations

import functools


@functools.cache
def unavailable() -> str | None:
    """Why llama_cpp cannot be used here (one line), or None when it can."""
    try:
        from axchat.actors.backends.llamacpp import c_api

        c_api.load()  # the C API alone: the first import of llama_cpp in a daemon is this one
    except Exception as exc:  # ImportError, or OSError from a libllama that will not load
        return (
            f"llama-cpp-python is not usable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
            "`make venv` builds it and `axchat doctor` tests it; `--backend torch` runs the model on torch instead"
        )
    return None
