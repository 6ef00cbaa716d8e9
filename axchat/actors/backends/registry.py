"""The engines behind `--backend`, by name. Each lives in its own package and is imported
only when chosen, so naming one never loads another's libraries (torch, llama_cpp, the
Voyager SDK)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, cast

from axchat.actors.backends.base import BackendInfo, DeviceBackend, ModelLoadError
from axchat.actors.backends.load_options import LoadOptions

# name -> the module that speaks for the engine (an `Engine`).
_ENTRIES = {
    "llamacpp": "axchat.actors.backends.llamacpp.entry",
    "torch": "axchat.actors.backends.torch_engine.entry",
    "aipu": "axchat.actors.backends.aipu.entry",
}
BACKENDS = tuple(_ENTRIES)


class Engine(Protocol):
    """What the daemon needs of an engine, in the order of a load's stages."""

    def unavailable(self) -> str | None:
        """Why the engine cannot run on this machine (one line), or None when it can."""

    def check_model(self, model: str) -> None:
        """Fail in milliseconds, with a ModelLoadError, on a model this engine cannot load."""

    def prepare(self, model: str, options: LoadOptions, progress: Callable[[str], None]) -> None:
        """One-off work before the weights can be read (llama.cpp: GGUF conversion)."""

    def load(self, model: str, options: LoadOptions) -> DeviceBackend:
        """Read the weights onto the device. Blocking."""

    def reload_options(self, options: LoadOptions, loaded: BackendInfo) -> LoadOptions:
        """The options for loading again after keep-alive unloaded `loaded`: what was
        measured at start-up goes back in, so nothing is measured (and paid for) again."""


def engine(name: str) -> Engine:
    try:
        entry = _ENTRIES[name]
    except KeyError:
        raise ModelLoadError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None
    return cast(Engine, importlib.import_module(entry))
