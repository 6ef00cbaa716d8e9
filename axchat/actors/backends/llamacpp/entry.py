"""The llama.cpp engine as the backend registry sees it (`registry.Engine`): the one
place that turns `LoadOptions` into this package's own load arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from axchat.actors.backends import llamacpp
from axchat.actors.backends.base import BackendInfo, DeviceBackend, ModelLoadError
from axchat.actors.backends.load_options import LoadOptions


def unavailable() -> str | None:
    return llamacpp.unavailable()


def check_model(model: str) -> None:
    pass  # the conversion (or the load of a GGUF file) reads the model first


def prepare(model: str, options: LoadOptions, progress: Callable[[str], None]) -> None:
    if llamacpp.unavailable() is None:  # else `load` says why
        from axchat.actors.backends.llamacpp.load import convert_if_needed

        for path in (model, options.draft_model):
            if path is not None:
                convert_if_needed(path, options.quant, options.dtype, options.threads, progress)


def load(model: str, options: LoadOptions) -> DeviceBackend:
    why = llamacpp.unavailable()
    if why is not None:
        raise ModelLoadError(why)
    from axchat.actors.backends.llamacpp import load as llamacpp_load
    from axchat.actors.backends.llamacpp.engine import EngineError

    try:
        return llamacpp_load.load(
            model,
            quant=options.quant,
            dtype=options.dtype,
            context=options.context,
            threads=options.threads,
            prefix_cache_bytes=options.prefix_cache_bytes,
            running_kv_bytes=options.running_kv_bytes,
            draft_model=options.draft_model,
        )
    except EngineError as exc:  # anything libllama refused past the checks in `load`
        raise ModelLoadError.because(f"llama.cpp cannot load {model}", exc) from None


def reload_options(options: LoadOptions, loaded: BackendInfo) -> LoadOptions:
    if loaded.threads:
        return replace(options, threads=loaded.threads)  # measured at start-up; not again
    return options
