"""The contract between the aipu backend and an Axelera runtime, and the adapter for
the real Voyager SDK. This is the only module that imports `axelera`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from axchat.actors.backends.base import ModelLoadError

log = logging.getLogger(__name__)

VOYAGER_INSTALL_HINT = (
    "install the Voyager SDK: clone https://github.com/axelera-ai-hub/voyager-sdk, run ./install.sh --all, "
    "then `source venv/bin/activate` before `axchat serve` (or use --aipu-runtime emulator)"
)


class AipuError(ModelLoadError):
    """Anything that stops the aipu backend from starting; one line for the user."""


class SdkMissing(AipuError):
    def __init__(self, detail: str = "") -> None:
        super().__init__(
            f"the Axelera runtime is not importable{f' ({detail})' if detail else ''}; {VOYAGER_INSTALL_HINT}"
        )


class NoCard(AipuError):
    def __init__(self, wanted: str | None = None) -> None:
        which = f" named {wanted}" if wanted else ""
        super().__init__(f"no Metis card{which} found (is the driver loaded? `axdevice` lists cards)")


class CardInUse(AipuError):
    def __init__(self, device: str, detail: str = "") -> None:
        super().__init__(
            f"Metis card {device} is in use by another process{f' ({detail})' if detail else ''}; "
            "stop it or pick another card with --aipu-device"
        )


class CardTooSmall(AipuError):
    def __init__(self, device: str, have_gb: float, need_gb: float, model: str) -> None:
        super().__init__(f"{model} needs a {need_gb:g} GB card; {device} has {have_gb:g} GB")


class FilesMissing(AipuError):
    def __init__(self, what: str, path: str, hint: str = "") -> None:
        super().__init__(f"{what} not found at {path}{f'; {hint}' if hint else ''}")


@dataclass(frozen=True)
class CardInfo:
    name: str  # "metis-0:1:0"
    memory_gb: float | None = None  # None: the runtime did not say


class ModelInstance(Protocol):
    """One loaded model on the card. `run` is synchronous and single-threaded."""

    # Multiply the int8 output by this for float logits (1.0 where the runtime gives none).
    logit_scale: float

    def run(self, inputs: np.ndarray, outputs: np.ndarray) -> None:
        """`inputs`: int8 (n, 2*hidden), the fp16 embeddings' bytes; n > 1 restarts the
        sequence, n == 1 continues it. `outputs`: int8 (vocab,), written in place."""


class Connection(Protocol):
    def load_model(self, path: str) -> ModelInstance: ...

    def close(self) -> None: ...


class AipuRuntime(Protocol):
    name: str  # "real", "emulator"

    def list_devices(self) -> list[CardInfo]: ...

    def connect(self, device: str, cores: int) -> Connection:
        """Reserve `cores` of `device` for this process; CardInUse if another holds it."""
        ...


# ---------------------------------------------------------------- the real SDK


def _import_axelera() -> Any:
    try:
        from axelera import runtime  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SdkMissing(str(exc)) from None
    return runtime


class _RealInstance:
    logit_scale = 1.0

    def __init__(self, instance: Any) -> None:
        self._instance = instance

    def run(self, inputs: np.ndarray, outputs: np.ndarray) -> None:
        self._instance.run([inputs], [outputs])


class _RealConnection:
    def __init__(self, context: Any, connection: Any) -> None:
        self._context = context
        self._connection = connection

    def load_model(self, path: str) -> ModelInstance:
        try:
            model = self._context.load_model(path)
            return _RealInstance(self._connection.load_model_instance(model))
        except Exception as exc:  # the SDK raises its own types; one line is what the user needs
            raise AipuError.because(f"the Axelera runtime cannot load {path}", exc) from None

    def close(self) -> None:
        for thing in (self._connection, self._context):
            release = getattr(thing, "release", None) or getattr(thing, "close", None)
            if release is not None:
                try:
                    release()
                except Exception:  # closing on the way out: log, never mask the real error
                    log.exception("releasing the Axelera runtime failed")


class RealRuntime:
    """`axelera.runtime`, imported on first use."""

    name = "real"

    def __init__(self) -> None:
        self._runtime = _import_axelera()
        self._context = self._runtime.Context()

    def _devices(self) -> list[Any]:
        return list(self._context.list_devices())

    def list_devices(self) -> list[CardInfo]:
        cards = []
        for dev in self._devices():
            name = str(getattr(dev, "name", dev))
            mem = getattr(dev, "memory_size", None) or getattr(dev, "memory", None)
            cards.append(
                CardInfo(name=name, memory_gb=float(mem) / (1 << 30) if isinstance(mem, int | float) else None)
            )
        return cards

    def connect(self, device: str, cores: int) -> Connection:
        for dev in self._devices():
            if str(getattr(dev, "name", dev)) == device:
                break
        else:
            raise NoCard(device)
        try:
            connection = self._context.device_connect(dev, num_sub_devices=cores)
        except Exception as exc:
            text = str(exc).lower()
            if "in use" in text or "busy" in text or "locked" in text:
                raise CardInUse(device, str(exc).splitlines()[0]) from None
            raise AipuError.because(f"cannot connect to {device}", exc) from None
        return _RealConnection(self._context, connection)


def load_runtime(kind: str, *, context: int = 1024) -> AipuRuntime:
    """`real` (the Voyager SDK) or `emulator` (a transformers model, for tests and demos;
    `context` is its static context: a real model's is fixed by its build)."""
    if kind == "real":
        return RealRuntime()
    if kind == "emulator":
        from axchat.testing.aipu_emulator import EmulatedRuntime

        return EmulatedRuntime(context=context)
    raise AipuError(f"unknown aipu runtime {kind!r}; choose real or emulator")
