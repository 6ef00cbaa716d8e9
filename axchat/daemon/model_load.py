"""Putting the model on the device, in stages a waiting client can be told about. The
one path for both the start-up load and a keep-alive reload of an unloaded model."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from axchat.actors.backends import BackendInfo, DeviceBackend, ModelLoadError, load_backend
from axchat.actors.tokenizer import load_tokenizer
from axchat.daemon.config import ServeConfig
from axchat.models.readable import unreadable_part

# Stages, in order: read and check the model's config; (llamacpp, first start of a
# model only) convert it to GGUF; read the weights onto the device; one forward pass,
# so the first request does not pay for lazy set-up.
STAGES = ("config", "convert", "weights", "warm-up")
WARM_UP_SEQ = -1  # never a request's id: those count up from 1
# Tests only: a load waits at the weights stage until this file exists, so a test can
# hold a reload open while clients queue behind it (tests/daemon/test_keepalive.py).
TEST_GATE_ENV = "AXCHAT_TEST_LOAD_GATE"
TEST_GATE_LIMIT_S = 120.0


def _no_progress(stage: str) -> None:
    pass


def load_device(cfg: ServeConfig, model: str, progress: Callable[[str], None] = _no_progress) -> DeviceBackend:
    """Blocking; run it off the event loop. Raises ModelLoadError with one line."""
    progress("config")
    unreadable = unreadable_part(model)
    if unreadable is not None:
        raise ModelLoadError(unreadable)
    if cfg.backend == "torch":
        from axchat.actors.backends import torch_backend

        # Milliseconds, and a vanished or broken model fails here, before the long part.
        torch_backend.load_config(model)
    elif cfg.backend == "llamacpp":
        from axchat.actors.backends import llamacpp

        if llamacpp.unavailable() is None:  # else load_backend says why
            from axchat.actors.backends.llamacpp.load import convert_if_needed

            convert_if_needed(model, cfg.quant, cfg.dtype, cfg.threads, progress)
    progress("weights")
    _wait_for_test_gate()
    backend = load_backend(
        cfg.backend,
        model,
        device=cfg.device,
        dtype=cfg.dtype,
        context=cfg.context,
        threads=cfg.threads,
        lanes=cfg.lanes,
        prefix_cache_bytes=cfg.prefix_cache_mb << 20,
        compile=cfg.compile,
        build_root=cfg.build_root,
        aipu_device=cfg.aipu_device,
        aipu_runtime=cfg.aipu_runtime,
        tokenizer_dir=cfg.tokenizer_dir,
        quant=cfg.quant,
    )
    progress("warm-up")
    try:
        backend.prefill(WARM_UP_SEQ, [0, 0])  # two tokens: the AIPU's least
        backend.release(WARM_UP_SEQ)
    except Exception as exc:
        backend.close()
        raise ModelLoadError.because("the model failed its first forward pass", exc) from None
    return backend


def _wait_for_test_gate() -> None:
    gate = os.environ.get(TEST_GATE_ENV)
    if not gate:
        return
    deadline = time.monotonic() + TEST_GATE_LIMIT_S
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)


def device_loader(
    cfg: ServeConfig, model: str, chosen: BackendInfo | None = None
) -> Callable[[Callable[[str], None]], DeviceBackend]:
    """What the device actor calls to load the model again after keep-alive unloaded it.

    With `chosen` (the start-up load's info), a reload keeps the dtype, thread count and
    lanes measured at start-up: measuring again would make the waiting client pay for it and
    could pick differently under momentary load."""
    if chosen is not None and chosen.backend == "torch":
        cfg = replace(
            cfg,
            dtype=chosen.dtype if cfg.dtype == "auto" else cfg.dtype,
            # The measured plan, which already kept within an explicit --threads.
            threads=chosen.threads or cfg.threads or None,
            lanes=chosen.lanes if chosen.threads else None,
        )
    elif chosen is not None and chosen.backend == "llamacpp" and chosen.threads:
        cfg = replace(cfg, threads=chosen.threads)  # measured at start-up; not again
    return functools.partial(load_device, cfg, model)


async def load_model(
    cfg: ServeConfig, model: str, progress: Callable[[str], None] = _no_progress
) -> tuple[DeviceBackend, Any]:
    """Start-up: the device and the tokenizer, each in a worker thread."""
    loop = asyncio.get_running_loop()
    backend = await loop.run_in_executor(None, load_device, cfg, model, progress)
    tokenizer = await loop.run_in_executor(None, load_tokenizer, backend.info.tokenizer or model)
    return backend, tokenizer
