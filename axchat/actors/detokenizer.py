"""Incremental detokenization that never shows half a character, and stop-string trimming."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"

# Tokenizers such as SentencePiece decide leading spaces from the token before, so a
# few prompt tokens are decoded along with the reply and then cut off again.
PROMPT_CONTEXT_TOKENS = 5


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turns token ids, one at a time, into new text.

    It decodes a short window (from `prefix` to the end) and compares it with the
    window's decoded prefix; text is released only when the window no longer ends in
    U+FFFD, i.e. when every byte of a split multi-byte character has arrived. Cost
    per token is bounded by the window, not by the reply length.
    """

    def __init__(self, decoder: Decoder, prompt_ids: Sequence[int]) -> None:
        self._decoder = decoder
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        # True while the newest bytes are part of an unfinished character.
        self.holding = False

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._release(final=False)

    def flush(self) -> str:
        """At the end of the reply: release whatever is left, even a broken character."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self.holding = after.endswith(REPLACEMENT) and not final
        if self.holding or (len(after) <= len(before) and not final):
            return ""
        # `after` extends `before` for every well-behaved tokenizer; one that rewrote
        # earlier text could not take back what was already shown anyway.
        new = after[len(before) :]
        self._prefix = self._read
        self._read = len(self._ids)
        return new

    def _decode(self, ids: Sequence[int]) -> str:
        return self._decoder.decode(ids, skip_special_tokens=True)


class StopMatcher:
    """Holds back text that might be the start of a stop string, and cuts at the
    first stop string found. With no stop strings it passes text straight through."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    @property
    def holding(self) -> bool:
        """Text is held back because it may be the start of a stop string."""
        return bool(self._held)

    def feed(self, text: str) -> str:
        """Text safe to show now. Sets `stopped` once a stop string appeared."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buf[:cut]
        keep = self._longest_partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self._held = self._held, ""
        return "" if self.stopped else out

    def _longest_partial_suffix(self, buf: str) -> int:
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
