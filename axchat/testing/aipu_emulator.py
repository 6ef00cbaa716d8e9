"""An emulated Metis card: the aipu runtime contract (`aipu_runtime.AipuRuntime`) on
top of a transformers model, so the real aipu backend runs in tests and demos.

It behaves as the card does where the backend can tell: int8 byte views of fp16
embeddings in, int8 logits out; a multi-token input restarts the sequence (the KV
lives "on the card"), a one-token input continues it; a static context (feeding past
it is an error); and an exclusive connect, held with an flock so a second connect of
the same device fails, from this process or another.

Logit quantization: one fixed scale per loaded model, `logit_scale = 1.5 * max|logit| / 127`
with max|logit| measured once at load over a calibration prompt (the first 64 token
ids). Logits are `clip(round(logit / logit_scale), -128, 127)`; the backend
multiplies back. Near-ties in float logits may collapse to the same int8 value, which
is where the emulated answer can differ from the torch backend's.
"""

from __future__ import annotations

import fcntl
import inspect
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from axchat.actors.backends.aipu_runtime import CardInfo, CardInUse, Connection, ModelInstance, NoCard

DEFAULT_DEVICES = ("metis-0:1:0",)
CALIBRATION_TOKENS = 64
LOCK_DIR_ENV = "AXCHAT_AIPU_EMULATOR_DIR"


def lock_dir() -> Path:
    """Where device locks live: $AXCHAT_AIPU_EMULATOR_DIR, else the user's runtime dir."""
    explicit = os.environ.get(LOCK_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"axchat-aipu-emulator-{os.getuid()}"


class EmulatorError(RuntimeError):
    """What the real runtime would refuse (a shape, a position past the context)."""


class EmulatedInstance:
    def __init__(self, model: Any, context: int) -> None:
        import torch
        from transformers import DynamicCache

        self._torch = torch
        self._cache_type = DynamicCache
        self._model = model
        self._context = context
        self._hidden = int(model.get_input_embeddings().weight.shape[1])
        self._vocab = int(model.get_output_embeddings().weight.shape[0])
        self._cache: Any = None
        # transformers 5.x renamed `past_key_values` to `cache`; ask the model.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._position = 0
        with torch.inference_mode():
            ids = torch.arange(min(CALIBRATION_TOKENS, self._vocab))[None]
            peak = float(model(input_ids=ids).logits.abs().max())
        self.logit_scale = 1.5 * max(peak, 1e-6) / 127

    def run(self, inputs: np.ndarray, outputs: np.ndarray) -> None:
        torch = self._torch
        if inputs.dtype != np.int8 or inputs.ndim != 2 or inputs.shape[1] != 2 * self._hidden:
            raise EmulatorError(f"input must be int8 (n, {2 * self._hidden}); got {inputs.dtype} {inputs.shape}")
        if outputs.dtype != np.int8 or outputs.shape != (self._vocab,):
            raise EmulatorError(f"output must be int8 ({self._vocab},); got {outputs.dtype} {outputs.shape}")
        n = inputs.shape[0]
        if n > 1 or self._cache is None:
            self._cache = self._cache_type(config=self._model.config)
            self._position = 0
        if self._position + n > self._context:
            raise EmulatorError(f"position {self._position + n} is past the static context of {self._context}")
        embeds = np.ascontiguousarray(inputs).view(np.float16)
        dtype = self._model.get_input_embeddings().weight.dtype
        with torch.inference_mode():
            x = torch.from_numpy(embeds.copy()).to(dtype)[None]
            positions = torch.arange(self._position, self._position + n)[None]
            out = self._model(inputs_embeds=x, position_ids=positions, use_cache=True, **{self._cache_kw: self._cache})
            logits = out.logits[0, -1].float().numpy()
        self._position += n
        outputs[:] = np.clip(np.rint(logits / self.logit_scale), -128, 127).astype(np.int8)


class EmulatedConnection:
    def __init__(self, device: str, lock: IO[bytes], context: int) -> None:
        self.device = device
        self._lock: IO[bytes] | None = lock
        self._context = context

    def load_model(self, path: str) -> ModelInstance:
        """`path`: a Hugging Face causal LM directory (a model.json's parent's parent
        for a real build is not a model the emulator can run)."""
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        return EmulatedInstance(model, self._context)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None


class EmulatedRuntime:
    name = "emulator"

    def __init__(self, *, context: int = 1024, devices: tuple[str, ...] = DEFAULT_DEVICES, memory_gb: float = 16.0):
        self.context = context
        self._devices = devices
        self._memory_gb = memory_gb

    def list_devices(self) -> list[CardInfo]:
        return [CardInfo(name=d, memory_gb=self._memory_gb) for d in self._devices]

    def connect(self, device: str, cores: int) -> Connection:
        if device not in self._devices:
            raise NoCard(device)
        directory = lock_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(directory / f"{device.replace(':', '_')}.lock", "wb")  # noqa: SIM115 - held for the connection's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise CardInUse(device, "emulated: another connection holds its lock") from None
        return EmulatedConnection(device, lock, self.context)
