"""Constrained token choice with llguidance: the model's vocabulary as llguidance sees
it, one matcher per request, its allowed-token mask applied to a row of logits.

The masks of a step's constrained rows are filled together (`fill_together`: llguidance's
own threads, the GIL released), on whichever thread asks: the device thread in a run of
greedy steps, a worker of the device actor otherwise, never the event loop."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from axchat.actors import grammar

# llguidance is imported where it is called (see grammar.py).
if TYPE_CHECKING:
    import llguidance as llg


class ConstraintVocab:
    """The llguidance tokenizer, built on first use (a large vocabulary takes about a
    second) from the tokenizer's own `tokenizer.json` text, or a GGUF's vocabulary through
    libllama: no torch, no transformers.
    One per daemon, shared by the tokenizer actor (checks) and the device (matchers)."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], vocab_size: int) -> None:
        self._source = tokenizer
        self._eos = sorted(set(eos_ids))
        self._vocab_size = vocab_size
        self._lock = threading.Lock()
        self._built: llg.LLTokenizer | None = None
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None)

    def get(self) -> llg.LLTokenizer:
        with self._lock:
            if self._built is None:
                self._built = self._build()
            return self._built

    def _build(self) -> llg.LLTokenizer:
        from_gguf = getattr(self._source, "llguidance_tokenizer", None)  # a GGUF's own vocabulary
        if from_gguf is not None:
            return from_gguf(self._vocab_size, self._eos)  # type: ignore[no-any-return]
        import llguidance as llg

        rust = _rust_tokenizer(self._source)
        n_vocab = max(self._vocab_size, int(rust.get_vocab_size(with_added_tokens=True)))
        return llg.LLTokenizer(rust.to_str(), n_vocab=n_vocab, eos_token=self._eos or None)


def _rust_tokenizer(tok: Any) -> Any:
    """The `tokenizers.Tokenizer` inside whatever the daemon holds: a Hugging Face fast
    tokenizer (`backend_tokenizer`), a wrapper around one, or the tokenizer itself."""
    for candidate in (tok, *(getattr(tok, name, None) for name in ("backend_tokenizer", "_tokenizer", "tokenizer"))):
        if candidate is not None and hasattr(candidate, "to_str") and hasattr(candidate, "get_vocab_size"):
            return candidate
    raise TypeError(f"no tokenizer.json behind {type(tok).__name__}: constraints need one")


def compile_matcher(vocab: ConstraintVocab, grammar_text: str) -> llg.LLMatcher:
    """A fresh matcher (its compile drops the GIL); one in error is still returned: its
    first mask reports it."""
    import llguidance as llg

    return llg.LLMatcher(vocab.get(), grammar_text, log_level=0, limits=grammar.limits())


class TokenMask:
    """One request's matcher and the mask of its next token, and, for a greedy stream
    that proposed tokens (grammar_drafts.py), the masks after each of them: filled in the
    same trip as the next token's, so a step verifying a proposal chooses each of its
    rows under that row's own mask."""

    __slots__ = ("_at", "_n", "_rows", "ahead", "failed", "filled", "matcher")

    def __init__(self, matcher: llg.LLMatcher, vocab_size: int) -> None:
        self.matcher = matcher
        self._n = vocab_size
        self._rows = np.zeros((1, (vocab_size + 31) // 32), dtype=np.int32)
        self._at = 0  # the row of the next token's mask
        self.ahead: list[int] = []  # proposed tokens after the next one: row _at + i + 1 follows ahead[: i + 1]
        self.filled = False
        self.failed: str | None = None  # why the grammar cannot go on

    @property
    def bits(self) -> np.ndarray:
        """The next token's mask, a bit per token id."""
        return self._rows[self._at]

    def expect(self, proposal: Sequence[int]) -> list[int]:
        """Have the next fill also give the masks after each token of `proposal`; returns
        the part of it the grammar allows, the rest dropped (never verified)."""
        self.filled, self._at = False, 0
        self.ahead = list(proposal[: self.matcher.validate_tokens(list(proposal))]) if proposal and self.failed is None else []
        if len(self.ahead) >= self._rows.shape[0]:  # grows to the longest proposal once
            self._rows = np.zeros((len(self.ahead) + 1, self._rows.shape[1]), dtype=np.int32)
        return list(self.ahead)  # a copy: choices consume `ahead` as the step's rows are verified

    def allowed(self, row: np.ndarray) -> np.ndarray:
        """A copy of `row` with every token the grammar forbids at -inf."""
        if not self.filled:
            fill_together([self])
        ok = np.unpackbits(self.bits.view(np.uint8), bitorder="little", count=min(self._n, row.size)).view(bool)
        out = _scratch(row.size)
        out.fill(-np.inf)
        np.copyto(out[: ok.size], row[: ok.size], where=ok)
        if self.failed is None and not ok.any():
            self.failed = self.matcher.get_error() or "no token can continue the reply"
        return out

    def consume(self, token: int) -> None:
        if self.filled and self.ahead and self.ahead[0] == token:
            self._at += 1  # the proposal's next mask is this state's: still filled
            del self.ahead[0]
        else:
            self.filled, self._at = False, 0
            self.ahead.clear()
        if self.failed is None and not self.matcher.consume_token(token):
            self.failed = self.matcher.get_error() or f"token {token} does not continue the reply"


class ConstrainedChoice:
    """A sampler whose choices the grammar masks first: what the device calls for a
    constrained greedy stream, on the loop or in a run of steps on its thread."""

    __slots__ = ("mask", "sampler")

    def __init__(self, sampler: Any, mask: TokenMask) -> None:
        self.sampler = sampler
        self.mask = mask

    @property
    def greedy(self) -> bool:
        return bool(self.sampler.greedy)

    def choose(self, logits: Any) -> int:
        token = int(self.sampler.choose(self.mask.allowed(np.asarray(logits))))
        self.mask.consume(token)
        return token


_local = threading.local()
_executor_lock = threading.Lock()
_executor: llg.LLExecutor | None = None


def _scratch(n: int) -> np.ndarray:
    buf: np.ndarray | None = getattr(_local, "row", None)
    if buf is None or buf.size < n:
        buf = np.empty(n, dtype=np.float32)
        _local.row = buf
    return buf[:n]


def _llg_executor() -> llg.LLExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            import llguidance as llg

            _executor = llg.LLExecutor(num_threads=2)  # the daemon's CPUs go to the engine
        return _executor


def fill_together(masks: Sequence[TokenMask]) -> None:
    """Fill the next-token mask of each of `masks` not yet filled, and the masks after
    each token it expects (`TokenMask.expect`), in one parallel call: llguidance steps
    each matcher through its proposal and back."""
    todo = [mask for mask in masks if not mask.filled and mask.failed is None]
    if not todo:
        return
    starts, rows = [], 0
    for mask in todo:
        starts.append(rows)
        rows += 1 + len(mask.ahead)
    batch = _batch(rows, todo[0].bits.size)
    pairs = list(zip(todo, starts, strict=True))
    plain = [(mask.matcher, at) for mask, at in pairs if not mask.ahead]
    ahead = [(mask.matcher, at, mask.ahead) for mask, at in pairs if mask.ahead]
    from llguidance.numpy import fill_next_token_bitmask_par, fill_next_token_bitmask_par_with_draft_tokens

    if plain:  # (llguidance refuses an empty proposal)
        fill_next_token_bitmask_par(_llg_executor(), plain, batch)
    if ahead:
        fill_next_token_bitmask_par_with_draft_tokens(_llg_executor(), ahead, batch)
    for mask, at in zip(todo, starts, strict=True):
        n = 1 + len(mask.ahead)
        mask._rows[:n] = batch[at : at + n]
        mask._at = 0
        mask.filled = True
        if mask.matcher.is_error():
            mask.failed = mask.matcher.get_error() or "the grammar failed"


def _batch(rows: int, words: int) -> np.ndarray:
    """The fill's target, kept per thread and grown as needed (no allocation a step)."""
    buf: np.ndarray | None = getattr(_local, "masks", None)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != words:
        buf = np.zeros((max(rows, 2 * (buf.shape[0] if buf is not None else 1)), words), dtype=np.int32)
        _local.masks = buf
    out = buf[:rows]
    out.fill(0)
    return out
