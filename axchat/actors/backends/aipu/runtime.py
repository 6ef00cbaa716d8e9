"""The adapter over `axelera.runtime`: every call axchat makes into the Voyager SDK is in
this module, and the emulator (`aipu.emulator`, `--aipu-runtime emulator`) offers the same calls, so
tests run this code as a card would. Also the errors a user sees when the card path fails."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

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
    def __init__(self, devices: list[str], detail: str = "") -> None:
        which = f"Metis card {devices[0]} is" if len(devices) == 1 else f"Metis cards {', '.join(devices)} are"
        super().__init__(
            f"{which} in use by another process{f' ({detail})' if detail else ''}; "
            "stop it or pick another card with --aipu-device"
        )


class CardTooSmall(AipuError):
    def __init__(self, model: str, need_gb: float, cards: list[tuple[str, float]]) -> None:
        have = ", ".join(f"{name} has {gb:.1f} GB" for name, gb in cards)
        super().__init__(f"{model} needs a card with at least {need_gb:g} GB of memory; {have}")


class BadDeviceSelector(AipuError):
    def __init__(self, selector: str, reason: str) -> None:
        super().__init__(f"invalid Metis device selector {selector!r}: {reason} (`axdevice` lists cards)")


class FilesMissing(AipuError):
    def __init__(self, what: str, path: str, hint: str = "") -> None:
        super().__init__(f"{what} not found at {path}{f'; {hint}' if hint else ''}")


@dataclass(frozen=True)
class CardInfo:
    index: int  # position in the SDK's device list, which a selector's number names
    name: str  # "metis-0:1:0"
    memory_gb: float | None = None  # GiB; None: the runtime did not say (0 in early releases)


# The seed always connects with 4 sub-devices "because we want all L1/L2 caches to be
# used", whatever the model was compiled for.
SUB_DEVICES = 4


class SdkInstance:
    """One model on the card. `run` is synchronous and single-threaded."""

    def __init__(self, instance: Any, output: Any) -> None:
        self._instance = instance
        # The output tensor's quantisation; the card's LLMs report 1.0 and 0 and the
        # seed uses the raw int8 values, which is what (1.0, 0) means here too.
        self.output_scale = float(getattr(output, "scale", 1.0))
        self.output_zero_point = int(getattr(output, "zero_point", 0))

    def run(self, inputs: np.ndarray, outputs: np.ndarray) -> None:
        """`inputs`: int8 (n, 2*hidden), the fp16 embeddings' bytes; n > 1 restarts the
        sequence, n == 1 continues it. `outputs`: int8 (vocab,), written in place."""
        self._instance.run([inputs], [outputs])


class SdkConnection:
    def __init__(self, context: Any, connection: Any, card: CardInfo) -> None:
        self.card = card
        self._context = context
        self._connection = connection

    def load_model(self, path: str) -> SdkInstance:
        try:
            model = self._context.load_model(path)
            instance = self._connection.load_model_instance(model)
        except Exception as exc:  # the SDK raises its own types; one line is what the user needs
            raise AipuError.because(f"the Axelera runtime cannot load {path}", exc) from None
        try:
            outputs = list(model.outputs())
        except Exception as exc:  # the seed never asks; raw int8 is what it then uses
            log.warning("%s: no output tensor info (%s); using the raw int8 logits", path, _first_line(exc))
            outputs = [None]
        if len(outputs) != 1:
            raise AipuError(f"{path} has {len(outputs)} output tensors; an LLM build has one (the logits)")
        return SdkInstance(instance, outputs[0])

    def close(self) -> None:
        for thing in (self._connection, self._context):
            release = getattr(thing, "release", None)
            if release is not None:
                try:
                    release()
                except Exception:  # closing on the way out: log, never mask the real error
                    log.exception("releasing the Axelera runtime failed")


class SdkRuntime:
    """`axelera.runtime` (or the emulator, which has the same calls) and one `Context`."""

    def __init__(self, sdk: Any, context: Any, name: str) -> None:
        self.name = name  # "real", "emulator"
        self._sdk = sdk
        self._context = context
        self._devices: list[Any] = []

    def list_devices(self) -> list[CardInfo]:
        self._devices = list(self._context.list_devices())
        cards = []
        for index, dev in enumerate(self._devices):
            memory = getattr(dev, "max_memory", 0)
            # Early releases leave `max_memory` at 0: unknown, not an empty card.
            gb = float(memory) / (1 << 30) if isinstance(memory, int | float) and memory > 0 else None
            cards.append(CardInfo(index=index, name=str(dev.name), memory_gb=gb))
        return cards

    def connect(self, card: CardInfo, sub_devices: int = SUB_DEVICES) -> SdkConnection:
        """Reserve `sub_devices` of `card` for this process; CardInUse if another holds them."""
        if not self._devices:
            self.list_devices()
        device = self._devices[card.index]
        device_in_use = getattr(self._sdk, "DeviceInUse", None)
        try:
            connection = self._context.device_connect(device=device, num_sub_devices=sub_devices)
        except Exception as exc:
            if device_in_use is not None and isinstance(exc, device_in_use):
                raise CardInUse([card.name], _first_line(exc)) from None
            raise AipuError.because(f"cannot connect to {card.name}", exc) from None
        return SdkConnection(self._context, connection, card)

    def close(self) -> None:
        """Release the context when no connection was made (a connection releases it)."""
        try:
            self._context.release()
        except Exception:
            log.exception("releasing the Axelera runtime failed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_axelera() -> Any:
    try:
        from axelera import runtime  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SdkMissing(str(exc)) from None
    return runtime


def load_runtime(kind: str, *, context: int = 1024) -> SdkRuntime:
    """`real` (the Voyager SDK) or `emulator` (a transformers model behind the same calls,
    for tests and demos; `context` is its static context for a model given as a Hugging
    Face directory: a real model's is fixed by its build)."""
    if kind == "real":
        sdk = _import_axelera()
        return SdkRuntime(sdk, sdk.Context(), kind)
    if kind == "emulator":
        from axchat.actors.backends.aipu import emulator

        return SdkRuntime(emulator, emulator.Context(static_context=context), kind)
    raise AipuError(f"unknown aipu runtime {kind!r}; choose real or emulator")
