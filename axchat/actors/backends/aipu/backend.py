"""Device backend for an Axelera Metis card: precompiled static-shape models run by the
Voyager SDK (or the emulator), input embeddings looked up on the host.

The card holds one sequence's KV and takes one input per step: a multi-token input
restarts the sequence, a one-token input continues it. So: batch 1, and a switch of
sequence costs a fresh prefill (`kv_survives_switch=False`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from axchat.actors.backends.aipu import runtime as rt
from axchat.actors.backends.aipu.cards import cards_with_memory, connect_first_free, select_cards
from axchat.actors.backends.aipu.embeddings import EmbeddingsError, load_embeddings
from axchat.actors.backends.aipu.model_files import build_tree_files, model_dir_files
from axchat.actors.backends.aipu.temperature import CoreTemperatureProbe
from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend, ModelLoadError
from axchat.actors.backends.load_options import LoadOptions
from axchat.models import model_files
from axchat.models.aipu_catalog import CATALOG, reply_reserve_for

log = logging.getLogger(__name__)

RUNTIME_ENV = "AXCHAT_AIPU_RUNTIME"


class AipuBackend(DeviceBackend):
    def __init__(
        self,
        instance: rt.SdkInstance,
        connection: rt.SdkConnection,
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
        # Dequantise only where the output tensor says so: the seed feeds the raw int8
        # values to argmax and softmax, and (1.0, 0) keeps exactly that.
        self._scale = np.float32(instance.output_scale)
        self._zero_point = np.float32(instance.output_zero_point)
        self._raw = (instance.output_scale, instance.output_zero_point) == (1.0, 0)
        self._on_card: int | None = None  # the sequence whose KV the card holds
        self._position = 0

    @classmethod
    def load(cls, model: str, options: LoadOptions) -> AipuBackend:
        """`model`: a catalog name, found in the build tree (on a card, or on the emulator
        with an emulated build), or with the emulator a Hugging Face model directory.
        Reads `context`, `build_root`, `aipu_device`, `aipu_runtime` and `tokenizer_dir`."""
        context, tokenizer_dir = options.context, options.tokenizer_dir
        kind = options.aipu_runtime or os.environ.get(RUNTIME_ENV) or "real"
        entry = CATALOG.get(model)
        if entry is None:
            if kind == "real":
                raise ModelLoadError(f"{model} is not a precompiled Metis model; choose one of: {', '.join(CATALOG)}")
            files = model_dir_files(Path(model).expanduser(), context, tokenizer_dir)
            sdk = rt.load_runtime(kind, context=files.context)
        else:
            # The SDK first: without it the compiled files cannot exist either.
            sdk = rt.load_runtime(kind, context=entry.context)
            try:
                files = build_tree_files(entry, options.build_root, context, tokenizer_dir)
            except BaseException:
                sdk.close()
                raise
        try:
            embeddings = load_embeddings(files.embeddings)
            cards = cards_with_memory(select_cards(sdk.list_devices(), options.aipu_device), files.need_gb, files.name)
            connection = connect_first_free(sdk, cards)
        except EmbeddingsError as exc:
            sdk.close()
            raise ModelLoadError(str(exc)) from None
        except BaseException:
            sdk.close()
            raise
        try:
            instance = connection.load_model(str(files.model))
            eos_ids = _eos_ids(files.model if entry is None else None)
        except BaseException:
            connection.close()
            raise
        card = connection.card
        info = BackendInfo(
            backend="aipu",
            model=files.name,
            device=card.name if kind == "real" else f"{card.name} (emulated)",
            dtype="int8",
            context_length=files.context,
            vocab_size=int(embeddings.shape[0]),
            eos_ids=eos_ids,
            reply_reserve=reply_reserve_for(files.context),
            tokenizer=files.tokenizer,
        )
        log.info(
            "loaded %s on %s (%s runtime, %d sub-devices, context %d, logits %s, embeddings %s%s, tokenizer %s)",
            info.model,
            info.device,
            kind,
            rt.SUB_DEVICES,
            files.context,
            "raw int8"
            if (instance.output_scale, instance.output_zero_point) == (1.0, 0)
            else f"dequantised (scale {instance.output_scale:g}, zero-point {instance.output_zero_point})",
            files.embeddings,
            ", memory-mapped" if isinstance(embeddings, np.memmap) else "",
            files.tokenizer,
        )
        return cls(instance, connection, embeddings, info, CoreTemperatureProbe.start_if_available())

    def _run(self, token_ids: Sequence[int]) -> np.ndarray:
        rows = np.ascontiguousarray(self._embeddings[np.asarray(token_ids, dtype=np.int64)], dtype=np.float16)
        self._instance.run(rows.view(np.int8), self._logits)
        self._position += len(token_ids)
        logits = self._logits.astype(np.float32)
        if not self._raw:
            logits -= self._zero_point
            logits *= self._scale
        return logits

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

    def wait_temperature(self, timeout_s: float) -> float | None:
        """The first reading, waiting up to `timeout_s` for it (None without `triton_trace`)."""
        return None if self._probe is None else self._probe.wait_reading(timeout_s)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        self._connection.close()


def _eos_ids(model_dir: Path | None) -> tuple[int, ...]:
    """The generation config's end ids where the model directory has one; the tokenizer's
    own eos is added by the daemon either way."""
    return tuple(model_files.declared_eos_ids(model_dir)) if model_dir is not None else ()
