"""The AIPU engine as the backend registry sees it (`registry.Engine`)."""

from __future__ import annotations

from collections.abc import Callable

from axchat.actors.backends.base import BackendInfo, DeviceBackend
from axchat.actors.backends.load_options import LoadOptions


def unavailable() -> str | None:
    return None  # a missing SDK or card is told at load, with what to do about it


def check_model(model: str) -> None:
    pass  # a catalog name or a model directory: the load tells which, and what is missing


def prepare(model: str, options: LoadOptions, progress: Callable[[str], None]) -> None:
    pass  # models arrive compiled (the emulator compiles nothing)


def load(model: str, options: LoadOptions) -> DeviceBackend:
    from axchat.actors.backends.aipu.backend import AipuBackend

    return AipuBackend.load(model, options)


def reload_options(options: LoadOptions, loaded: BackendInfo) -> LoadOptions:
    return options  # nothing is measured at load
