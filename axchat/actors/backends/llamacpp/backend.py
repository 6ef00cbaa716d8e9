"""The `llamacpp` device backend: every request is a llama.cpp sequence id in one context
whose KV cells all sequences share. A decode step is one `llama_decode` of every running
sequence's next token; prompt pieces of several sequences (and a long prompt's chunk
beside a decode step) go in the same batch, as llama-server does.

A finished sequence's KV is copied out to host memory as a prefix-cache entry and its
cells freed; a later request of the same client gets the entry sharing the longest
prefix copied back in (a memory copy, far cheaper than its prefill) and feeds only the
rest. Kept out of the pool, entries cost the running sequences nothing: llama.cpp's
attention spans every used cell of the pool (masked per sequence), so kept cells there
would slow every decode step by the size of the cache.

With `--draft-model`, a second model in its own context (draft_model.py) guesses the
tokens a decode step verifies; a released sequence frees its cells there too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend
from axchat.actors.backends.llamacpp import vocab_share
from axchat.actors.backends.llamacpp.draft_model import DraftModel
from axchat.actors.backends.llamacpp.engine import Engine, NoKvRoom
from axchat.actors.backends.prefix_store import PrefixStore


class LlamaCppBackend(DeviceBackend):
    def __init__(
        self,
        engine: Engine,
        info: BackendInfo,
        *,
        max_batch: int,
        prefill_chunk: int = 256,
        prefix_cache_bytes: int = 0,
        draft: DraftModel | None = None,
    ) -> None:
        self.engine = engine
        self.draft = draft
        self.info = info
        # The tokenizer reads the model's own vocabulary while this backend holds it.
        self._vocab = vocab_share.share_of(engine.path)
        self._vocab.lend(engine.model)
        self.capabilities = Capabilities(
            max_batch=max_batch,
            kv_survives_switch=True,
            prefill_chunk=prefill_chunk,
            prefix_cache=prefix_cache_bytes > 0,
            prefill_rows=max_batch,
            mixed_steps=True,
            drafts=True,
            draft_model=draft is not None,
            kv_cells=engine.cells,
        )
        self._max_batch = max_batch
        # Entries are llama.cpp sequence states (Engine.save), in host memory.
        self._prefixes: PrefixStore[np.ndarray] = PrefixStore(prefix_cache_bytes)
        self._free_ids = list(range(max_batch))[::-1]  # popped from the end: 0 first
        self._seq: dict[int, int] = {}  # request sequence -> llama.cpp sequence id
        self._length: dict[int, int] = {}  # positions of KV each holds
        # The kept entry each sequence started from: the next turn of a conversation
        # supersedes it (its tail, the last answer as generated, rarely matches the
        # answer as the client sends it back, so it is never a strict prefix).
        self._parent: dict[int, np.ndarray] = {}
        self._parked: dict[int, np.ndarray] = {}  # sequences whose KV waits in host memory (`park`)

    # ------------------------------------------------------------ sequence ids

    def _free(self, llama_seq: int) -> None:
        self.engine.forget(llama_seq)
        self._free_ids.append(llama_seq)

    def _claim(self, seq_id: int) -> int:
        if seq_id in self._seq:
            raise ValueError(f"sequence {seq_id} is already started")
        if len(self._seq) >= self._max_batch:
            raise RuntimeError(f"all {self._max_batch} sequences are running")
        llama_seq = self._free_ids.pop()
        self._seq[seq_id] = llama_seq
        self._length[seq_id] = 0
        return llama_seq

    # ------------------------------------------------------------ feeding

    def _feed(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]], every_row: bool = False) -> np.ndarray:
        """Each sequence's piece in one batch, in the caller's order; logits after each
        piece, or with `every_row` after each token of each piece."""
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        want: list[int] = []
        for seq_id, piece in zip(seq_ids, pieces, strict=True):
            start = self._length[seq_id]
            if every_row:
                want.extend(range(len(tokens), len(tokens) + len(piece)))
            tokens.extend(piece)
            positions.extend(range(start, start + len(piece)))
            seqs.extend([self._seq[seq_id]] * len(piece))
            if not every_row:
                want.append(len(tokens) - 1)
        try:
            logits = self.engine.run(tokens, positions, seqs, want)
        except NoKvRoom:
            self._undo(seq_ids)  # what the failed call wrote, so that the KV is as before
            raise
        for seq_id, piece in zip(seq_ids, pieces, strict=True):
            self._length[seq_id] += len(piece)
        return logits

    def _undo(self, seq_ids: Sequence[int]) -> None:
        for seq_id in seq_ids:
            self.engine.forget(self._seq[seq_id], self._length[seq_id])

    # ------------------------------------------------------------ DeviceBackend

    def _prompt(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]]) -> np.ndarray:
        """Prompt pieces, then the same pieces to the draft model."""
        starts = [self._length[s] for s in seq_ids]
        logits = self._feed(seq_ids, pieces)
        if self.draft is not None:
            self.draft.follow(seq_ids, pieces, starts)
        return logits

    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        self._claim(seq_id)
        return self._prompt([seq_id], [token_ids])[0]

    def extend(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        return self._prompt([seq_id], [token_ids])[0]

    def extend_batch(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]]) -> np.ndarray:
        return self._prompt(seq_ids, pieces)

    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        return self._feed(seq_ids, [[t] for t in token_ids])

    def decode_and_extend(
        self,
        seq_ids: Sequence[int],
        token_ids: Sequence[int],
        chunk_seqs: Sequence[int],
        chunks: Sequence[Sequence[int]],
    ) -> tuple[np.ndarray, np.ndarray]:
        starts = [self._length[s] for s in chunk_seqs]
        logits = self._feed([*seq_ids, *chunk_seqs], [*([t] for t in token_ids), *chunks])
        if self.draft is not None:
            self.draft.follow(chunk_seqs, chunks, starts)
        return logits[: len(seq_ids)], logits[len(seq_ids) :]

    def decode_drafts(
        self, seq_ids: Sequence[int], token_ids: Sequence[int], drafts: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        # One llama_decode for every row: the weights are read once for all of them.
        pieces = [[t, *d] for t, d in zip(token_ids, drafts, strict=True)]
        try:
            logits = self._feed(seq_ids, pieces, every_row=True)
        except NoKvRoom:
            if not any(drafts):
                raise
            # Proposals never take the cells a plain step needs: the step goes without.
            self._undo(seq_ids)
            pieces = [[t] for t in token_ids]
            logits = self._feed(seq_ids, pieces, every_row=True)
        rows, at = [], 0
        for piece in pieces:
            rows.append(logits[at : at + len(piece)])
            at += len(piece)
        return rows

    def propose(
        self,
        seq_ids: Sequence[int],
        histories: Sequence[Sequence[int]],
        prompt_lengths: Sequence[int],
        lengths: Sequence[int],
    ) -> list[list[int]]:
        assert self.draft is not None, "proposals asked of a backend loaded without a draft model"
        return self.draft.propose(seq_ids, histories, prompt_lengths, lengths)

    def trim(self, seq_id: int, drop: int) -> None:
        if drop > 0:
            self._length[seq_id] -= drop
            self.engine.forget(self._seq[seq_id], self._length[seq_id])

    def start(self, seq_id: int, prompt_ids: Sequence[int], salt: str) -> int:
        llama_seq = self._claim(seq_id)
        if not self.capabilities.prefix_cache:
            return 0
        found = self._prefixes.longest_match(salt, list(prompt_ids), limit=len(prompt_ids) - 1)
        if found is None:
            return 0
        kept, n = found
        if not self.engine.restore(kept, llama_seq):
            self.engine.forget(llama_seq)  # no run of free cells for it: a fresh prefill
            return 0
        self.engine.forget(llama_seq, n)  # the entry's tail past the shared prefix
        self._parent[seq_id] = kept
        self._length[seq_id] = n
        if self.draft is not None:  # it keeps no conversations: it reads the prefix again
            self.draft.follow([seq_id], [prompt_ids[:n]], [0])
        return n

    def park(self, seq_id: int) -> None:
        llama_seq = self._seq[seq_id]
        self._parked[seq_id] = self.engine.save(llama_seq)
        self.engine.forget(llama_seq)
        if self.draft is not None:  # it reads the history again when the stream next proposes
            self.draft.release(seq_id)

    def unpark(self, seq_id: int) -> bool:
        if not self.engine.restore(self._parked[seq_id], self._seq[seq_id]):
            self.engine.forget(self._seq[seq_id])  # what a failed restore may have placed
            return False
        del self._parked[seq_id]
        return True

    def release(self, seq_id: int, keep: tuple[str, list[int]] | None = None) -> None:
        if self.draft is not None:
            self.draft.release(seq_id)
        llama_seq = self._seq.pop(seq_id, None)
        if llama_seq is None:
            return
        length = self._length.pop(seq_id)
        parent = self._parent.pop(seq_id, None)
        parked = self._parked.pop(seq_id, None)
        if keep is not None and self.capabilities.prefix_cache:
            salt, tokens = keep
            # A sequence cut short mid-step has KV and ids that disagree: keep nothing.
            if length == len(tokens) and length > 0:
                if parent is not None:
                    # Without this each turn would add an entry, and a few chatty
                    # conversations would push everyone else's out of the cache.
                    self._prefixes.discard(parent)
                blob = self.engine.save(llama_seq) if parked is None else parked
                self._prefixes.put(salt, tokens, blob, blob.nbytes)
        self._free(llama_seq)

    def live_sequences(self) -> int:
        return len(self._seq)

    def forget_prefixes(self, connection: str) -> None:
        self._prefixes.forget(connection)

    def prefix_cache_usage(self) -> tuple[int, int]:
        return len(self._prefixes), self._prefixes.bytes

    def close(self) -> None:
        self._seq.clear()
        self._length.clear()
        self._parent.clear()
        self._parked.clear()
        if self.draft is not None:
            self.draft.close()
        self._vocab.take_back(self.engine.model)
        self.engine.close()
