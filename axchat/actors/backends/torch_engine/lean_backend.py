"""Device backend for Llama-family models on the lean forward (lean_llama): each
sequence owns a slot of a static KV cache, so a batched decode step reads KV in place."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend
from axchat.actors.backends.prefix_store import PrefixStore
from axchat.actors.backends.torch_engine.lean_llama import Feed, LeanLlama


class LeanTorchBackend(DeviceBackend):
    def __init__(self, lean: LeanLlama, info: BackendInfo, prefill_chunk: int = 256, prefix_cache_bytes: int = 0) -> None:
        self.lean = lean
        self.info = info
        self.capabilities = Capabilities(
            max_batch=lean.cache.shape[0],
            kv_survives_switch=True,
            prefill_chunk=prefill_chunk,
            prefix_cache=prefix_cache_bytes > 0,
            prefill_rows=lean.cache.shape[0],
            mixed_steps=True,
        )
        # Kept KV: one tensor [layers, 2, kv_heads, tokens, head_dim] per entry.
        self._prefixes: PrefixStore[torch.Tensor] = PrefixStore(prefix_cache_bytes)
        self._device = lean.device
        # Live sequences fill slots 0..n-1 (compacted on release), so the usual batch,
        # every running sequence, is one contiguous slice of the cache.
        self._slot: dict[int, int] = {}
        self._length: dict[int, int] = {}  # positions of KV each sequence holds

    # ------------------------------------------------------------ slots

    def _claim(self, seq_id: int) -> int:
        if seq_id in self._slot:
            raise ValueError(f"sequence {seq_id} is already started")
        slot = len(self._slot)
        if slot >= self.capabilities.max_batch:
            raise RuntimeError(f"all {slot} KV slots are taken")
        self._slot[seq_id] = slot
        self._length[seq_id] = 0
        return slot

    def _ids(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self._device)

    def _feed(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        order, feed = self._rows([seq_id], [token_ids])
        return self._advanced([seq_id], [token_ids], order, self.lean.forward_feeds([feed])[0])[0]

    # ------------------------------------------------------------ DeviceBackend

    @torch.inference_mode()
    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        self._claim(seq_id)
        return self._feed(seq_id, token_ids)

    @torch.inference_mode()
    def extend(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        return self._feed(seq_id, token_ids)

    @torch.inference_mode()
    def extend_batch(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]]) -> np.ndarray:
        # Rows padded at the end to the longest piece; a pad must stay inside the context
        # (its KV lands there), else each piece goes alone.
        width = max(len(p) for p in pieces)
        if any(self._length[s] + width > self.lean.context for s in seq_ids):
            return super().extend_batch(seq_ids, pieces)
        order, feed = self._rows(seq_ids, pieces)
        return self._advanced(seq_ids, pieces, order, self.lean.forward_feeds([feed])[0])

    @torch.inference_mode()
    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        pieces = [[t] for t in token_ids]
        order, feed = self._rows(seq_ids, pieces)
        return self._advanced(seq_ids, pieces, order, self.lean.forward_feeds([feed])[0])

    @torch.inference_mode()
    def decode_and_extend(
        self,
        seq_ids: Sequence[int],
        token_ids: Sequence[int],
        chunk_seqs: Sequence[int],
        chunks: Sequence[Sequence[int]],
    ) -> tuple[np.ndarray, np.ndarray]:
        pieces = [[t] for t in token_ids]
        order, feed = self._rows(seq_ids, pieces)
        chunk_order, chunk_feed = self._rows(chunk_seqs, chunks)
        decoded, chunk_logits = self.lean.forward_feeds([feed, chunk_feed])
        return (
            self._advanced(seq_ids, pieces, order, decoded),
            self._advanced(chunk_seqs, chunks, chunk_order, chunk_logits),
        )

    def _rows(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]]) -> tuple[list[int], Feed]:
        """One feed of each sequence's piece, in slot order as the forward wants it (the
        order returned), rows padded at the end to the longest."""
        order = sorted(range(len(seq_ids)), key=lambda i: self._slot[seq_ids[i]])
        width = max(len(p) for p in pieces)
        lengths = [len(pieces[i]) for i in order]
        return order, Feed(
            self._ids([list(pieces[i]) + [0] * (width - len(pieces[i])) for i in order]),
            [self._slot[seq_ids[i]] for i in order],
            [self._length[seq_ids[i]] for i in order],
            lengths if min(lengths) < width else None,
        )

    def _advanced(
        self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]], order: list[int], logits: torch.Tensor
    ) -> np.ndarray:
        """Each sequence's KV now holds its piece; the logits go back in the caller's order."""
        for seq_id, piece in zip(seq_ids, pieces, strict=True):
            self._length[seq_id] += len(piece)
        out = np.empty((len(seq_ids), logits.shape[-1]), dtype=np.float32)
        out[order] = logits.cpu().numpy()
        return out

    @torch.inference_mode()
    def start(self, seq_id: int, prompt_ids: Sequence[int], salt: str) -> int:
        slot = self._claim(seq_id)
        found = self._prefixes.longest_match(salt, list(prompt_ids), limit=len(prompt_ids) - 1)
        if found is None:
            return 0
        kept, n = found
        # Copied into the slot: the kept entry stays intact for other branches.
        self.lean.cache.restore(slot, kept, n)
        self._length[seq_id] = n
        return n

    @torch.inference_mode()
    def release(self, seq_id: int, keep: tuple[str, list[int]] | None = None) -> None:
        slot = self._slot.pop(seq_id, None)
        if slot is None:
            return
        length = self._length.pop(seq_id)
        if keep is not None and self.capabilities.prefix_cache:
            salt, tokens = keep
            # A sequence cut short mid-step has KV and ids that disagree: keep nothing.
            if length == len(tokens) and length > 0:
                kv = self.lean.cache.export(slot, length)
                self._prefixes.put(salt, tokens, kv, kv.nbytes)
        # Keep the live slots 0..n-1: the last one moves into the hole.
        last = len(self._slot)
        if slot != last:
            moved = next(s for s, at in self._slot.items() if at == last)
            self.lean.cache.copy_slot(last, slot, self._length[moved])
            self._slot[moved] = slot

    def live_sequences(self) -> int:
        return len(self._slot)

    def prefix_cache_usage(self) -> tuple[int, int]:
        return len(self._prefixes), self._prefixes.bytes

    def forget_prefixes(self, connection: str) -> None:
        self._prefixes.forget(connection)

    def close(self) -> None:
        self._slot.clear()
        self._length.clear()
        self.lean.close()  # its lane threads
