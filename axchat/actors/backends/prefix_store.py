"""Kept KV of finished sequences, for reuse by the next turn of the same conversation.

Chat clients resend the whole conversation each turn; if the KV of the last turn is
still here, only the new tokens need a prefill. Entries are private to a `salt` (the
client's identity): one client's cached conversation never serves another. Bounded by
a byte budget, least recently used first out.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

KV = TypeVar("KV")


@dataclass
class _Entry(Generic[KV]):
    salt: str
    tokens: np.ndarray  # int64 ids the KV covers, in order
    kv: KV
    nbytes: int


class PrefixStore(Generic[KV]):
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: collections.OrderedDict[int, _Entry[KV]] = collections.OrderedDict()
        self._next_key = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, salt: str, tokens: list[int], kv: KV, nbytes: int) -> bool:
        """Keep `kv`; False when it does not fit at all (the caller still owns it)."""
        if nbytes > self.budget_bytes or not tokens:
            return False
        ids = np.asarray(tokens, dtype=np.int64)
        # An entry this one extends is now redundant: drop it rather than hold it twice.
        for key, entry in list(self._entries.items()):
            if entry.salt == salt and len(entry.tokens) <= len(ids) and np.array_equal(entry.tokens, ids[: len(entry.tokens)]):
                self._drop(key)
        self._entries[self._next_key] = _Entry(salt, ids, kv, nbytes)
        self._next_key += 1
        self.bytes += nbytes
        while self.bytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def longest_match(self, salt: str, tokens: list[int], limit: int) -> tuple[KV, int] | None:
        """The KV sharing the longest prefix with `tokens` (at most `limit` tokens of
        it), and that length; None when nothing of this salt shares a token."""
        ids = np.asarray(tokens, dtype=np.int64)
        best_key, best_n = -1, 0
        for key, entry in self._entries.items():
            if entry.salt != salt:
                continue
            n = min(len(entry.tokens), len(ids), limit)
            mismatch = np.flatnonzero(entry.tokens[:n] != ids[:n])
            common = int(mismatch[0]) if mismatch.size else n
            if common > best_n:
                best_key, best_n = key, common
        if best_key < 0:
            return None
        self._entries.move_to_end(best_key)  # recently used
        return self._entries[best_key].kv, best_n

    def discard(self, kv: KV) -> None:
        """Drop the entry holding this very `kv` object, if it is still here."""
        for key in [k for k, e in self._entries.items() if e.kv is kv]:
            self._drop(key)

    def forget(self, connection: str) -> None:
        """Drop every entry of `connection` and of the users behind it."""
        owned = connection + "/"
        for key in [k for k, e in self._entries.items() if e.salt == connection or e.salt.startswith(owned)]:
            self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.nbytes
