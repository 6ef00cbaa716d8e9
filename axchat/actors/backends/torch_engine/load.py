"""Loading a Hugging Face transformers model onto the CPU or a CUDA device: the lean
Llama path where the model allows (its plan measured at load), else the generic backend."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as transformers_logging

from axchat.actors.backends.base import BackendInfo, DeviceBackend, ModelLoadError
from axchat.actors.backends.load_options import LoadOptions
from axchat.actors.backends.torch_engine import decode_tuning, lean_llama
from axchat.actors.backends.torch_engine.generic_backend import TorchBackend
from axchat.host_cores import default_threads

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The dtype to load weights in. On CPU "auto" loads float32: the lean path then
    measures float32 against bfloat16 (decode_tuning); the generic path keeps float32."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose auto, {', '.join(_DTYPES)}") from None


def model_display_name(model: str) -> str:
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or (os.sep in model and Path(model).expanduser().exists())


def load_config(model: str) -> Any:
    """The model's config, or a one-line ModelLoadError saying what is wrong."""
    path = Path(model).expanduser()
    if _looks_like_path(model) and not path.exists():
        raise ModelLoadError(f"model path {model} does not exist")
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ModelLoadError.because(f"cannot load a model config from {model}", exc) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{model} is a {config.model_type!r} model, not a causal language model")
    return config


def load(model: str, options: LoadOptions, *, max_batch: int = 8, lean: bool = True) -> DeviceBackend:
    """The lean backend for Llama-family models (unless `lean` is False), else the
    generic one. `options.threads` None: measured at load from the usable cores.
    `options.lanes` (lean path only) with `threads`: exactly that plan, as a reload after
    keep-alive asks for the one measured at start-up."""
    device = resolve_device(options.device)
    torch_dtype = resolve_dtype(options.dtype, device)
    context = options.context
    torch.set_num_threads(options.threads or default_threads())
    config = load_config(model)
    transformers_logging.disable_progress_bar()  # a progress bar is noise in a service log
    try:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError.because(f"cannot load model weights from {model}", exc) from None
    lm = lm.to(device).eval()  # type: ignore[arg-type]  # transformers' stubs mistype .to()
    model_context = int(getattr(config, "max_position_embeddings", 0) or 2048)
    if context is not None and context > model_context:
        raise ModelLoadError(f"--context {context} is more than the model's {model_context} positions")
    eos = lm.generation_config.eos_token_id
    eos_ids = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    info = BackendInfo(
        backend="torch",
        model=model_display_name(model),
        device=device,
        dtype=str(torch_dtype).removeprefix("torch."),
        context_length=context or model_context,
        vocab_size=int(config.vocab_size),
        eos_ids=eos_ids,
        decode_path="generic",
        threads=torch.get_num_threads(),
    )
    if lean and lean_llama.supports(lm):
        return _load_lean(lm, info, options, max_batch)
    log.info("loaded %s on %s as %s, %d threads", info.model, device, info.dtype, torch.get_num_threads())
    return TorchBackend(lm, info, max_batch, prefix_cache_bytes=options.prefix_cache_bytes)


def _load_lean(lm: Any, info: BackendInfo, options: LoadOptions, max_batch: int) -> DeviceBackend:
    from axchat.actors.backends.torch_engine.lean_backend import LeanTorchBackend

    dtype, threads, lanes, compile = options.dtype, options.threads, options.lanes, options.compile

    dtypes = [lm.dtype]
    if dtype == "auto" and info.device == "cpu":
        dtypes.append(torch.bfloat16)
    if threads and lanes:
        candidates = [decode_tuning.Plan(threads, lanes)]
    else:
        # `--threads N` (else the usable cores) is the budget; how to spend it is measured.
        # Lanes only on the CPU (a GPU has its own parallelism) and not compiled (a
        # compiled graph cannot hand work to other threads).
        candidates = decode_tuning.plans(threads or default_threads(), lanes=info.device == "cpu" and not compile)
    tuned = decode_tuning.choose(lambda d: lean_llama.LeanLlama(lm, max_batch, info.context_length, d), dtypes, candidates)
    lean = tuned.lean
    if compile:
        lean.compile()
    warm_s = decode_tuning.warm_up(lean)
    info = replace(
        info,
        dtype=str(tuned.dtype).removeprefix("torch."),
        dtype_reason=tuned.reason,
        decode_path="lean",
        threads=tuned.plan.threads,
        lanes=tuned.plan.lanes,
        compiled=compile,
        compile_s=round(warm_s, 2) if compile else 0.0,
    )
    log.info(
        "loaded %s on %s as %s, %s (lean Llama path; %s); %s",
        info.model, info.device, info.dtype, tuned.plan, tuned.reason,
        f"compiled in {warm_s:.1f}s" if compile else f"not compiled, warmed up in {warm_s:.1f}s",
    )
    return LeanTorchBackend(
        lean, info, prefill_chunk=tuned.prefill_chunk, prefix_cache_bytes=options.prefix_cache_bytes
    )
