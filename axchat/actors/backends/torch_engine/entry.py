"""The torch engine as the backend registry sees it (`registry.Engine`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from axchat.actors.backends.base import BackendInfo, DeviceBackend, ModelLoadError
from axchat.actors.backends.load_options import LoadOptions


def unavailable() -> str | None:
    from axchat.actors.backends.torch_engine import missing_extra

    return missing_extra("the torch backend")


def check_model(model: str) -> None:
    why = unavailable()
    if why is not None:
        raise ModelLoadError(why)
    from axchat.actors.backends.torch_engine import load

    # Milliseconds, and a vanished or broken model fails here, before the long part.
    load.load_config(model)


def prepare(model: str, options: LoadOptions, progress: Callable[[str], None]) -> None:
    pass  # transformers reads the model as it is


def load(model: str, options: LoadOptions) -> DeviceBackend:
    from axchat.actors.backends.torch_engine import load as torch_load

    return torch_load.load(model, options)


def reload_options(options: LoadOptions, loaded: BackendInfo) -> LoadOptions:
    return replace(
        options,
        dtype=loaded.dtype if options.dtype == "auto" else options.dtype,
        # The measured plan, which already kept within an explicit --threads.
        threads=loaded.threads or options.threads or None,
        lanes=loaded.lanes if loaded.threads else None,
    )
