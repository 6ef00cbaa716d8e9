"""Quantized GGUF weights made by libllama's own `llama_model_quantize` from a float GGUF."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp

from axchat.actors.backends.llamacpp.engine import EngineError, init_once

QUANT_TYPES = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}


class QuantizeError(EngineError):
    """libllama could not quantize the model; one line."""


def quantize(src: Path, dst: Path, kind: str, threads: int) -> None:
    init_once()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = QUANT_TYPES[kind]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise QuantizeError(f"llama_model_quantize to {kind} failed ({rc}); see the log above")
