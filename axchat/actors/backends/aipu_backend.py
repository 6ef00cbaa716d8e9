"""Device backend for an Axelera Metis card: precompiled static-shape models run by the
Voyager SDK (or the emulator), input embeddings looked up on the host.

The card holds one sequence's KV and takes one input per step: a multi-token input
restarts the sequence, a one-token input continues it. So: batch 1, and a switch of
sequence costs a fresh prefill (`kv_survives_switch=False`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from axchat.actors.backends import aipu_runtime as rt
from axchat.actors.backends.aipu_catalog import CATALOG, reply_reserve_for
from axchat.actors.backends.aipu_embeddings import EmbeddingsError, extract_embeddings, load_embeddings
from axchat.actors.backends.aipu_temperature import CoreTemperatureProbe
from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend, ModelLoadError

log = logging.getLogger(__name__)

RUNTIME_ENV = "AXCHAT_AIPU_RUNTIME"
DEFAULT_EMULATED_CONTEXT = 1024


def default_build_root() -> Path:
    framework = os.environ.get("AXELERA_FRAMEWORK")
    return Path(framework) / "build" if framework else Path("build")


def find_embeddings(model_dir: Path) -> Path | None:
    for pattern in ("embeddings.npz", "embeddings.npy", "*embed*.npz", "*embed*.npy", "**/*embed*.np[yz]"):
        found = sorted(model_dir.glob(pattern))
        if found:
            return found[0]
    return None


def emulator_embeddings(model_dir: Path) -> Path:
    """The model's own `embeddings.npz`, else one extracted once into the user's cache."""
    local = find_embeddings(model_dir)
    if local is not None:
        return local
    stamp = f"{model_dir.resolve()}:{max((p.stat().st_mtime_ns for p in model_dir.glob('*.safetensors')), default=0)}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "axchat" / "aipu-embeddings"
    out = cache / f"{model_dir.name}-{key}.npz"
    if not out.exists():
        log.info("extracting input embeddings of %s into %s", model_dir, out)
        extract_embeddings(str(model_dir), out)
    return out


class AipuBackend(DeviceBackend):
    def __init__(
        self,
        instance: rt.ModelInstance,
        connection: rt.Connection,
        embeddings: np.ndarray,
        info: BackendInfo,
        probe: CoreTemperatureProbe | None = None,
    ) -> None:
        self.info = info
        self.capabilities = Capabilities(max_batch=1, kv_survives_switch=False, prefill_chunk=None, prefix_cache=False)
        self._instance = instance
        self._connection = connection
        self._embeddings = embeddings
        self._probe = probe
        self._logits = np.zeros(info.vocab_size, dtype=np.int8)
        self._on_card: int | None = None  # the sequence whose KV the card holds
        self._position = 0

    @classmethod
    def load(
        cls,
        model: str,
        *,
        context: int | None = None,
        build_root: str | None = None,
        aipu_device: str | None = None,
        runtime: str | None = None,
    ) -> AipuBackend:
        kind = runtime or os.environ.get(RUNTIME_ENV) or "real"
        entry = CATALOG.get(model)
        if kind == "real":
            if entry is None:
                raise ModelLoadError(f"{model} is not a precompiled Metis model; choose one of: {', '.join(CATALOG)}")
            # The SDK first: without it the compiled files cannot exist either.
            runtime_impl = rt.load_runtime(kind, context=entry.context)
            root = Path(build_root) if build_root else default_build_root()
            model_path = root / model / "model" / "model.json"
            if not model_path.is_file():
                raise rt.FilesMissing(
                    "the compiled model",
                    str(model_path),
                    f"deploy it with the Voyager SDK (./deploy.py {model}) or pass --build-root",
                )
            embeddings_path = find_embeddings(root / model)
            if embeddings_path is None:
                raise rt.FilesMissing(
                    "the input embeddings",
                    str(root / model / "embeddings.npz"),
                    f"write them with `axchat extract-embeddings {entry.tokenizer} {root / model / 'embeddings.npz'}`",
                )
            static_context, tokenizer, cores = entry.context, entry.tokenizer, entry.cores
            if context is not None and context != static_context:
                raise ModelLoadError(
                    f"{model} was compiled for a context of {static_context}; --context cannot change it"
                )
        else:
            model_dir = Path(model).expanduser()
            if not (model_dir / "config.json").is_file():
                raise rt.FilesMissing("a Hugging Face model directory (the emulator runs one)", str(model_dir))
            model_path, tokenizer, cores = model_dir, str(model_dir), 4
            static_context = context or _emulated_context(model_dir)
            try:
                embeddings_path = emulator_embeddings(model_dir)
            except (OSError, ValueError) as exc:
                raise ModelLoadError.because(f"cannot extract the input embeddings of {model_dir}", exc) from None
            runtime_impl = rt.load_runtime(kind, context=static_context)
        try:
            embeddings = load_embeddings(embeddings_path)
        except EmbeddingsError as exc:
            raise ModelLoadError(str(exc)) from None

        cards = runtime_impl.list_devices()
        if not cards:
            raise rt.NoCard()
        card = next((c for c in cards if c.name == aipu_device), None) if aipu_device else cards[0]
        if card is None:
            raise rt.NoCard(aipu_device)
        if entry is not None and card.memory_gb is not None and card.memory_gb + 0.5 < entry.card_gb:
            raise rt.CardTooSmall(card.name, card.memory_gb, entry.card_gb, model)
        connection = runtime_impl.connect(card.name, cores)
        try:
            instance = connection.load_model(str(model_path))
            eos_ids = _eos_ids(model_path if kind != "real" else None)
        except BaseException:
            connection.close()
            raise
        info = BackendInfo(
            backend="aipu",
            model=model if entry is not None else model_dir.resolve().name,
            device=card.name if kind == "real" else f"{card.name} (emulated)",
            dtype="int8",
            context_length=static_context,
            vocab_size=int(embeddings.shape[0]),
            eos_ids=eos_ids,
            reply_reserve=reply_reserve_for(static_context),
            tokenizer=tokenizer,
        )
        log.info(
            "loaded %s on %s (%s runtime, %d cores, context %d, embeddings %s%s)",
            info.model,
            info.device,
            kind,
            cores,
            static_context,
            embeddings_path,
            ", memory-mapped" if isinstance(embeddings, np.memmap) else "",
        )
        return cls(instance, connection, embeddings, info, CoreTemperatureProbe.start_if_available())

    def _run(self, token_ids: Sequence[int]) -> np.ndarray:
        rows = np.ascontiguousarray(self._embeddings[np.asarray(token_ids, dtype=np.int64)], dtype=np.float16)
        self._instance.run(rows.view(np.int8), self._logits)
        self._position += len(token_ids)
        return self._logits.astype(np.float32) * np.float32(self._instance.logit_scale)

    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        if len(token_ids) < 2:
            # A one-token input would continue whatever sequence the card holds.
            raise ValueError("the Metis model needs a prompt of at least two tokens")
        self._on_card, self._position = seq_id, 0
        return self._run(token_ids)

    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        if len(seq_ids) != 1 or seq_ids[0] != self._on_card:
            raise RuntimeError(f"the card holds sequence {self._on_card}, not {list(seq_ids)}: batch 1, no KV switch")
        if self._position >= self.info.context_length:
            raise RuntimeError(f"the static context of {self.info.context_length} tokens is full")
        return self._run(token_ids)[None, :]

    def release(self, seq_id: int, keep: tuple[str, list[int]] | None = None) -> None:
        if self._on_card == seq_id:
            self._on_card = None

    def live_sequences(self) -> int:
        return 0 if self._on_card is None else 1

    def temperature_c(self) -> float | None:
        return None if self._probe is None else self._probe.reading_c()

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        self._connection.close()


def _emulated_context(model_dir: Path) -> int:
    import json

    try:
        positions = int(json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings") or 0)
    except (OSError, ValueError):
        positions = 0
    return min(DEFAULT_EMULATED_CONTEXT, positions) if positions else DEFAULT_EMULATED_CONTEXT


def _eos_ids(model_dir: Path | None) -> tuple[int, ...]:
    """The generation config's end ids where the model directory has one; the tokenizer's
    own eos is added by the daemon either way."""
    if model_dir is None:
        return ()
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except (OSError, ValueError):
        return ()
    return tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
