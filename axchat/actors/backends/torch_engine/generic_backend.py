"""The generic torch backend: any transformers causal LM, one DynamicCache per sequence,
batched decode by left-padding. Used for models the lean path does not support."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend
from axchat.actors.backends.prefix_store import PrefixStore


def _kv(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A full-attention cache layer's key and value tensors."""
    return layer.keys, layer.values


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad the sequence axis (dim 2 of [batch, heads, seq, dim]) with n zeros in front."""
    return torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t


class TorchBackend(DeviceBackend):
    def __init__(
        self, model: Any, info: BackendInfo, max_batch: int, prefill_chunk: int = 256, prefix_cache_bytes: int = 0
    ) -> None:
        self.model = model
        self.info = info
        self.capabilities = Capabilities(
            max_batch=max_batch,
            kv_survives_switch=True,
            prefill_chunk=prefill_chunk,
            prefix_cache=prefix_cache_bytes > 0,
        )
        self._prefixes: PrefixStore[DynamicCache] = PrefixStore(prefix_cache_bytes)
        self._device = torch.device(info.device)
        self._caches: dict[int, DynamicCache] = {}
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns,
        # then goes away); ask the model which one it takes.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @torch.inference_mode()
    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        self._caches[seq_id] = DynamicCache(config=self.model.config)
        return self._feed(seq_id, token_ids)

    @torch.inference_mode()
    def extend(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        return self._feed(seq_id, token_ids)

    def _feed(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self._device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: self._caches[seq_id]})
        return out.logits[0, -1].float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        if len(seq_ids) == 1:
            cache = self._caches[seq_ids[0]]
            ids = torch.tensor([[token_ids[0]]], dtype=torch.long, device=self._device)
            out = self.model(input_ids=ids, use_cache=True, **{self._cache_kw: cache})
            return out.logits[:, -1].float().cpu().numpy()
        return self._decode_batch(seq_ids, token_ids)

    def _decode_batch(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """One forward for several sequences of different lengths.

        Each sequence's KV is left-padded to the longest and stacked; the attention
        mask hides the padding and explicit position ids keep every sequence's own
        positions, so each row computes what it would alone. Afterwards the new KV is
        cut back per sequence. The copy costs memory bandwidth, not extra forwards.
        """
        caches = [self._caches[s] for s in seq_ids]
        lengths = [c.get_seq_length() for c in caches]
        longest = max(lengths)
        n_layers = len(caches[0].layers)
        stacked = []
        for layer in range(n_layers):
            kv = [_kv(c.layers[layer]) for c in caches]
            keys = [_left_pad(k, longest - n) for (k, _), n in zip(kv, lengths, strict=True)]
            values = [_left_pad(v, longest - n) for (_, v), n in zip(kv, lengths, strict=True)]
            stacked.append((torch.cat(keys), torch.cat(values)))
        batch_cache = DynamicCache(stacked, config=self.model.config)
        mask = torch.zeros((len(seq_ids), longest + 1), dtype=torch.long, device=self._device)
        for row, n in enumerate(lengths):
            mask[row, longest - n :] = 1
        positions = torch.tensor([[n] for n in lengths], dtype=torch.long, device=self._device)
        ids = torch.tensor([[t] for t in token_ids], dtype=torch.long, device=self._device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: batch_cache},
        )
        for row, (seq_id, n) in enumerate(zip(seq_ids, lengths, strict=True)):
            start = longest - n
            per_seq = [
                (k[row : row + 1, :, start:].clone(), v[row : row + 1, :, start:].clone())
                for k, v in (_kv(layer) for layer in batch_cache.layers)
            ]
            self._caches[seq_id] = DynamicCache(per_seq, config=self.model.config)
        return out.logits[:, -1].float().cpu().numpy()

    @torch.inference_mode()
    def start(self, seq_id: int, prompt_ids: Sequence[int], salt: str) -> int:
        found = self._prefixes.longest_match(salt, list(prompt_ids), limit=len(prompt_ids) - 1)
        if found is None:
            self._caches[seq_id] = DynamicCache(config=self.model.config)
            return 0
        kept, n = found
        # A copy: the kept entry stays intact for other branches of the conversation.
        layers = [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in (_kv(layer) for layer in kept.layers)]
        self._caches[seq_id] = DynamicCache(layers, config=self.model.config)
        return n

    def release(self, seq_id: int, keep: tuple[str, list[int]] | None = None) -> None:
        cache = self._caches.pop(seq_id, None)
        if cache is None or keep is None or not self.capabilities.prefix_cache:
            return
        salt, tokens = keep
        if cache.get_seq_length() != len(tokens):
            return  # a sequence cut short mid-step: its KV and ids disagree, keep nothing
        nbytes = sum(k.nbytes + v.nbytes for k, v in (_kv(layer) for layer in cache.layers))
        self._prefixes.put(salt, tokens, cache, nbytes)

    def prefix_cache_usage(self) -> tuple[int, int]:
        return len(self._prefixes), self._prefixes.bytes

    def forget_prefixes(self, connection: str) -> None:
        self._prefixes.forget(connection)

    def live_sequences(self) -> int:
        return len(self._caches)

    def close(self) -> None:
        self._caches.clear()
        self.model = None
