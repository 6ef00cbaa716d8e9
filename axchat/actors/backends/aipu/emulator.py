"""An emulated `axelera.runtime`: the same classes and calls the aipu adapter makes on the
real SDK (`Context`, `list_devices`, `device_connect`, `load_model`, `outputs()`,
`load_model_instance`, `run`, `release`, `DeviceInUse`), on top of a transformers model,
so the adapter and the backend run unchanged in tests and demos.

It behaves as the card does where the backend can tell:
- cards: `DeviceInfo` with `name`, `subdevice_count` 4 and `max_memory` in bytes; the set
  comes from $AXCHAT_AIPU_EMULATOR_CARDS (`name=GiB,...`, default one 16 GiB card);
- `device_connect(device, num_sub_devices=n)` reserves n of the card's four sub-devices,
  each held with an flock, so a reservation is seen by every process; when fewer than n
  are free it raises `DeviceInUse`;
- int8 byte views of fp16 embeddings in, int8 logits out; a multi-token input restarts
  the sequence (the KV lives "on the card"), a one-token input continues it; a static
  context (feeding past it is an error);
- logits: the int8 values come from one fixed scale per loaded model,
  `1.5 * max|logit| / 127` over a calibration prompt (the first 64 token ids). In the
  default `raw` mode the output `TensorInfo` says scale 1.0 and zero-point 0, as the
  card's LLM outputs do (the SDK uses the raw int8 values); in `scaled[:ZP]` mode
  ($AXCHAT_AIPU_EMULATOR_LOGITS) it reports that scale and adds zero-point ZP, so the
  backend's dequantisation is exercised.
- card time ($AXCHAT_AIPU_EMULATOR_STEP_MS, `DECODE[,PER_PROMPT_TOKEN]`, default none): a
  `run` takes at least DECODE ms (plus PER_PROMPT_TOKEN ms a row for a prompt), as `run`
  blocks on the real runtime while the card computes. The wait is a sleep, so it holds
  neither the GIL nor a core, and several emulated cards overlap as real ones would.
  This models a card's timing for scheduling tests and benches; it measures no card.
- a card that dies: once the file `fail_marker(name)` exists (in the lock directory), every
  `run` on that card raises, as a card that stopped responding would; create it (from
  another process, at any time) to fail a card; once it is removed, runs succeed again.

A model path is a Hugging Face model directory, or a build tree's `model.json` written by
`write_build_tree` (which names such a directory and the static context).
"""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

CARDS_ENV = "AXCHAT_AIPU_EMULATOR_CARDS"
LOGITS_ENV = "AXCHAT_AIPU_EMULATOR_LOGITS"
LOCK_DIR_ENV = "AXCHAT_AIPU_EMULATOR_DIR"
STEP_MS_ENV = "AXCHAT_AIPU_EMULATOR_STEP_MS"
DEFAULT_CARDS = "metis-0:1:0=16"
SUB_DEVICES_PER_CARD = 4
CALIBRATION_TOKENS = 64
DEFAULT_STATIC_CONTEXT = 1024


def fail_marker(card: str) -> Path:
    """While this file exists, the card fails every `run` (a card that stopped responding)."""
    return lock_dir() / f"{card.replace(':', '_')}.failed"


def lock_dir() -> Path:
    """Where sub-device locks live: $AXCHAT_AIPU_EMULATOR_DIR, else the user's runtime dir."""
    explicit = os.environ.get(LOCK_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"axchat-aipu-emulator-{os.getuid()}"


# ------------------------------------------------------------- the SDK's exceptions


class EmulatorError(RuntimeError):
    """What the real runtime would refuse (a shape, a position past the context)."""


class DeviceInUse(EmulatorError):
    """As `axelera.runtime.DeviceInUse`: the sub-devices asked for are reserved elsewhere."""


class InvalidArgument(EmulatorError, ValueError):
    """As `axelera.runtime.InvalidArgument`."""


# ------------------------------------------------------------------- the SDK's types


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    max_memory: int  # bytes
    subdevice_count: int = SUB_DEVICES_PER_CARD


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: Any = np.int8
    name: str = ""
    padding: list[tuple[int, int]] = field(default_factory=list)
    scale: float = 1.0
    zero_point: int = 0


def parse_cards(spec: str) -> list[DeviceInfo]:
    """`metis-0:1:0=16,metis-0:3:0=4`: names and memory in GiB (0: not reported)."""
    cards = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, gib = item.partition("=")
        cards.append(DeviceInfo(name=name, max_memory=int(float(gib or 16) * (1 << 30))))
    return cards


# ----------------------------------------------------------------------- the model


class Model:
    """A loaded (not yet placed) model: the transformers module and its tensor infos."""

    def __init__(self, path: str, default_context: int, logits_mode: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as transformers_logging

        hf_dir, self.static_context = _resolve_model_path(Path(path), default_context)
        transformers_logging.disable_progress_bar()
        self.module = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        self.hidden = int(self.module.get_input_embeddings().weight.shape[1])
        self.vocab = int(self.module.get_output_embeddings().weight.shape[0])
        with torch.inference_mode():
            ids = torch.arange(min(CALIBRATION_TOKENS, self.vocab))[None]
            peak = float(self.module(input_ids=ids).logits.abs().max())
        # How the "hardware" turns float logits into int8, whatever the tensor info says.
        self.quant_scale = 1.5 * max(peak, 1e-6) / 127
        mode, _, zero_point = logits_mode.partition(":")
        if mode == "raw":
            self._output = TensorInfo((self.vocab,), name="logits")
        elif mode == "scaled":
            self._output = TensorInfo(
                (self.vocab,), name="logits", scale=self.quant_scale, zero_point=int(zero_point or 0)
            )
        else:
            raise InvalidArgument(f"{LOGITS_ENV} must be raw or scaled[:ZERO_POINT], not {logits_mode!r}")

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo((self.static_context, 2 * self.hidden), name="embeddings")]

    def outputs(self) -> list[TensorInfo]:
        return [self._output]


def _resolve_model_path(path: Path, default_context: int) -> tuple[Path, int]:
    if path.name == "model.json":
        try:
            stand_in = json.loads(path.read_text())
            return Path(stand_in["emulate"]), int(stand_in["context"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"{path} is not an emulated build's model.json ({exc})") from None
    return path, default_context


class ModelInstance:
    """A model placed on a connection's sub-devices; `run` is one forward on the card."""

    def __init__(self, model: Model, card: str = "") -> None:
        import torch
        from transformers import DynamicCache

        self._card = card
        self._fail_marker = fail_marker(card)

        self._torch = torch
        self._cache_type = DynamicCache
        self._model = model
        self._cache: Any = None
        # transformers 5.x renamed `past_key_values` to `cache`; ask the model.
        params = inspect.signature(model.module.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._position = 0
        output = model.outputs()[0]
        self._zero_point = output.zero_point
        self._step_s, self._per_prompt_token_s = card_time(os.environ.get(STEP_MS_ENV, ""))

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        if self._fail_marker.exists():
            raise EmulatorError(f"{self._card} stopped responding (emulated failure)")
        started = time.monotonic()
        self._run(inputs, outputs)
        rows = inputs[0].shape[0]
        card_s = self._step_s + (self._per_prompt_token_s * rows if rows > 1 else 0.0)
        left = card_s - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)  # the card computing: no GIL held, no core used

    def _run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        model = self._model
        if len(inputs) != 1 or len(outputs) != 1:
            raise InvalidArgument(f"one input and one output tensor; got {len(inputs)} and {len(outputs)}")
        x_in, out = inputs[0], outputs[0]
        if x_in.dtype != np.int8 or x_in.ndim != 2 or x_in.shape[1] != 2 * model.hidden:
            raise EmulatorError(f"input must be int8 (n, {2 * model.hidden}); got {x_in.dtype} {x_in.shape}")
        if out.dtype != np.int8 or out.shape != (model.vocab,):
            raise EmulatorError(f"output must be int8 ({model.vocab},); got {out.dtype} {out.shape}")
        n = x_in.shape[0]
        if n > 1 or self._cache is None:
            self._cache = self._cache_type(config=model.module.config)
            self._position = 0
        if self._position + n > model.static_context:
            raise EmulatorError(f"position {self._position + n} is past the static context of {model.static_context}")
        logits = self._forward(np.ascontiguousarray(x_in).view(np.float16))
        self._position += n
        quantised = np.rint(logits / model.quant_scale) + self._zero_point
        out[:] = np.clip(quantised, -128, 127).astype(np.int8)

    def _forward(self, embeds: np.ndarray) -> np.ndarray:
        """The card's compute for one `run`: float logits after the last input row."""
        torch, module = self._torch, self._model.module
        n = embeds.shape[0]
        with torch.inference_mode():
            x = torch.from_numpy(embeds.copy()).to(module.get_input_embeddings().weight.dtype)[None]
            positions = torch.arange(self._position, self._position + n)[None]
            out = module(inputs_embeds=x, position_ids=positions, use_cache=True, **{self._cache_kw: self._cache})
            return out.logits[0, -1].float().numpy()


def card_time(spec: str) -> tuple[float, float]:
    """$AXCHAT_AIPU_EMULATOR_STEP_MS as seconds: (a run, each extra prompt row)."""
    if not spec.strip():
        return 0.0, 0.0
    try:
        parts = [float(p) for p in spec.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or any(p < 0 or p != p for p in parts):
        raise InvalidArgument(f"{STEP_MS_ENV} must be DECODE_MS or DECODE_MS,PER_PROMPT_TOKEN_MS; got {spec!r}")
    return parts[0] / 1000, (parts[1] if len(parts) == 2 else 0.0) / 1000


# -------------------------------------------------------------- context, connection


class Connection:
    """Holds the reserved sub-devices until `release`."""

    def __init__(self, device: DeviceInfo, locks: list[IO[bytes]]) -> None:
        self.device = device
        self.num_sub_devices = len(locks)
        self._locks = locks

    def load_model_instance(self, model: Model, **kwargs: Any) -> ModelInstance:
        if not self._locks:
            raise EmulatorError("the connection was released")
        return ModelInstance(model, self.device.name)

    def release(self) -> None:
        for lock in self._locks:
            lock.close()  # closing the file drops the flock
        self._locks = []


class Context:
    def __init__(self, *, static_context: int = DEFAULT_STATIC_CONTEXT, cards: str | None = None) -> None:
        self._static_context = static_context
        self._cards = parse_cards(cards if cards is not None else os.environ.get(CARDS_ENV) or DEFAULT_CARDS)
        self._logits_mode = os.environ.get(LOGITS_ENV) or "raw"
        self._connections: list[Connection] = []

    def list_devices(self) -> list[DeviceInfo]:
        return list(self._cards)

    def device_connect(self, device: DeviceInfo | None = None, num_sub_devices: int = 1, **kwargs: Any) -> Connection:
        device = device or self._cards[0]
        if device.name not in {c.name for c in self._cards}:
            raise InvalidArgument(f"no device {device.name}")
        if not 1 <= num_sub_devices <= device.subdevice_count:
            raise InvalidArgument(f"num_sub_devices must be 1..{device.subdevice_count}, not {num_sub_devices}")
        directory = lock_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        held: list[IO[bytes]] = []
        for index in range(device.subdevice_count):
            if len(held) == num_sub_devices:
                break
            lock: IO[bytes] = open(directory / f"{device.name.replace(':', '_')}.sub{index}.lock", "wb")  # noqa: SIM115
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            held.append(lock)
        if len(held) < num_sub_devices:
            for lock in held:
                lock.close()
            raise DeviceInUse(f"{device.name}: {num_sub_devices} sub-devices asked, {len(held)} free (emulated)")
        connection = Connection(device, held)
        self._connections.append(connection)
        return connection

    def load_model(self, path: str) -> Model:
        return Model(str(path), self._static_context, self._logits_mode)

    def release(self) -> None:
        for connection in self._connections:
            connection.release()
        self._connections = []


# ------------------------------------------------------------- an emulated build tree


def write_build_tree(
    build_root: Path,
    name: str,
    hf_model_dir: Path,
    *,
    context: int,
    tokenizer_dir_name: str | None = None,
    embeddings_from: Path | None = None,
) -> Path:
    """What the SDK leaves under its build directory for a precompiled model, with the
        compiled model replaced by a `model.json` naming `hf_model_dir`: `<name>/model/model.json`,
        `<name>/embeddings.npz` and, with `tokenizer_dir_name`, the extracted tokenizer archive
        under `tokenizers/<tokenizer_dir_name>/`. `embeddings_from`: an embeddings file to copy
    instead of extracting the model's again. Returns the model's directory."""
    import shutil

    from axchat.actors.backends.aipu.embeddings import extract_embeddings

    model_dir = build_root / name
    (model_dir / "model").mkdir(parents=True, exist_ok=True)
    stand_in = {"emulate": str(Path(hf_model_dir).resolve()), "context": context}
    (model_dir / "model" / "model.json").write_text(json.dumps(stand_in))
    if embeddings_from is not None:
        shutil.copy(embeddings_from, model_dir / "embeddings.npz")
    else:
        extract_embeddings(str(hf_model_dir), model_dir / "embeddings.npz")
    if tokenizer_dir_name is not None:
        tokenizer = build_root / "tokenizers" / tokenizer_dir_name
        tokenizer.mkdir(parents=True, exist_ok=True)
        for item in Path(hf_model_dir).iterdir():
            if item.name.startswith(("tokenizer", "special_tokens")) or item.suffix == ".jinja":
                shutil.copy(item, tokenizer / item.name)
        (tokenizer / ".extracted_tokenizer").write_text("done")  # the SDK's marker of a finished extract
    return model_dir
