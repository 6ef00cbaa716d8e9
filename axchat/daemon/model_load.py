"""Putting the model on the device, in stages a waiting client can be told about. The
one path for both the start-up load and a keep-alive reload of an unloaded model."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from axchat import host_memory
from axchat.actors.backends import BackendInfo, DeviceBackend, LoadOptions, ModelLoadError, registry
from axchat.actors.tokenizer import load_tokenizer
from axchat.daemon.config import ServeConfig
from axchat.models.readable import unreadable_part

# Stages, in order: read and check the model's config; (llamacpp, first start of a
# model only) convert it to GGUF; read the weights onto the device; one forward pass,
# so the first request does not pay for lazy set-up.
STAGES = ("config", "convert", "weights", "warm-up")
WARM_UP_SEQ = -1  # never a request's id: those count up from 1

T = TypeVar("T")


def _no_progress(stage: str) -> None:
    pass


def load_options(cfg: ServeConfig) -> LoadOptions:
    """The settings a backend loads with: taken from the config here, and only here."""
    return LoadOptions(
        device=cfg.device,
        dtype=cfg.dtype,
        context=cfg.context,
        threads=cfg.threads,
        prefix_cache_bytes=kv_budget(cfg.prefix_cache_mb),
        running_kv_bytes=kv_budget(cfg.running_kv_mb),
        compile=cfg.compile,
        quant=cfg.quant,
        # Loaded only where it is used: `--speculate off` need not unset a configured one.
        draft_model=cfg.draft_model if cfg.speculate == "draft" else None,
        build_root=cfg.build_root,
        aipu_device=cfg.aipu_device,
        aipu_runtime=cfg.aipu_runtime,
        tokenizer_dir=cfg.tokenizer_dir,
    )


def kv_budget(mb: int | None) -> int:
    """A KV pool's bytes: as configured, else the default share of available memory."""
    return mb << 20 if mb is not None else host_memory.default_kv_bytes(host_memory.available_bytes())


def load_device(
    backend: str, model: str, options: LoadOptions, progress: Callable[[str], None] = _no_progress
) -> DeviceBackend:
    """Blocking; run it off the event loop. Raises ModelLoadError with one line."""
    progress("config")
    unreadable = unreadable_part(model)
    if unreadable is not None:
        raise ModelLoadError(unreadable)
    engine = registry.engine(backend)
    engine.check_model(model)
    engine.prepare(model, options, progress)
    progress("weights")
    loaded = engine.load(model, options)
    progress("warm-up")
    try:
        loaded.prefill(WARM_UP_SEQ, [0, 0])  # two tokens: the AIPU's least
        loaded.release(WARM_UP_SEQ)
    except Exception as exc:
        loaded.close()
        raise ModelLoadError.because("the model failed its first forward pass", exc) from None
    return loaded


def device_loader(
    cfg: ServeConfig, model: str, chosen: BackendInfo | None = None
) -> Callable[[Callable[[str], None]], DeviceBackend]:
    """What the device actor calls to load the model again after keep-alive unloaded it.

    With `chosen` (the start-up load's info), a reload keeps what its engine measured at
    start-up (torch: dtype, thread count and lanes; llama.cpp: threads): measuring again
    would make the waiting client pay for it and could pick differently under momentary load."""
    options = load_options(cfg)
    if chosen is not None:
        options = registry.engine(chosen.backend).reload_options(options, chosen)
    return functools.partial(load_device, cfg.backend, model, options)


async def load_model(
    cfg: ServeConfig, model: str, progress: Callable[[str], None] = _no_progress
) -> tuple[DeviceBackend, Any]:
    """Start-up: the device and the tokenizer, each in a worker thread."""
    backend = await in_own_thread(load_device, cfg.backend, model, load_options(cfg), progress)
    # Its own thread too: nothing else runs on the loop's default executor, whose thread
    # (and its malloc arena) would stay for good.
    tokenizer = await in_own_thread(load_tokenizer, backend.info.tokenizer or model, backend.info.vocab_gguf)
    host_memory.return_freed_heap()  # what the loads held only for a while
    return backend, tokenizer


async def in_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a new thread that has ended when this returns.

    Why not the loop's default executor, whose threads live on: a load computes (warm-up, llama.cpp's
    thread probe), and OpenMP (llama.cpp's and torch's CPU kernels) gives each thread
    that computes its own team of worker threads, kept until that thread exits. With
    the loader's team still there beside the device thread's, every llama.cpp step ran
    1.5x slower (8-row decode steps of the 135M shape: 41 against 27 ms, measured with
    both teams and after the loading thread had ended)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axchat-load")
    future = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    try:
        return await future
    finally:
        # Settled: the worker is past the call, and shutdown joins it (microseconds).
        # Cancelled (a shutdown during the load): never hold the loop for the load.
        pool.shutdown(wait=not future.cancelled())
