"""What a device backend must provide. The device actor (`axchat.actors.device`) plans
its steps only from this interface, so the torch, llama.cpp and AIPU backends are
interchangeable."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class ModelLoadError(Exception):
    """The model could not be loaded; the message is one line for the user."""

    @classmethod
    def because(cls, what: str, exc: BaseException) -> ModelLoadError:
        """`what: <first line of exc>`: library errors run to pages; the user needs one line."""
        text = str(exc).strip()
        return cls(f"{what}: {text.splitlines()[0] if text else type(exc).__name__}")


@dataclass(frozen=True)
class BackendInfo:
    backend: str  # its name in the registry: "torch", "llamacpp", "aipu"
    model: str  # the name clients see and may ask for
    device: str  # "cpu", "cuda:0", "metis-0:1:0"
    dtype: str
    context_length: int
    vocab_size: int
    eos_ids: tuple[int, ...] = ()
    # Tokens kept free for the reply when trimming chat history; None: min(max_tokens, context // 8).
    reply_reserve: int | None = None
    # Where the tokenizer comes from when it is not the model argument (a precompiled model's HF id).
    tokenizer: str | None = None
    # How the decode step runs, for status and the log: "lean" or "generic" (torch), "" (others).
    decode_path: str = ""
    dtype_reason: str = ""  # why this dtype (and thread count): what was measured at load
    threads: int = 0  # intra-op threads of the forward (per lane); 0: not applicable
    lanes: int = 1  # threads that split each matmul's columns (lean path on a CPU)
    compiled: bool = False
    compile_s: float = 0.0  # compile and warm-up before ready
    # What the load planned to hold, in bytes (0: not planned, engines other than llama.cpp).
    weights_bytes: int = 0
    running_kv_bytes: int = 0
    prefix_kv_bytes: int = 0
    # llama.cpp: the GGUF file whose vocabulary, which the engine holds anyway, encodes as the
    # model's tokenizer files do; the tokenizer reads it instead of loading a copy of its own.
    vocab_gguf: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What the device actor's step planning may ask of the backend."""

    max_batch: int  # sequences one decode step can advance
    kv_survives_switch: bool  # False: running another sequence destroys this one's KV
    # Longest prompt piece one forward may take; None: the whole prompt at once (static
    # shapes). Chunks let decode steps of other users run between them.
    prefill_chunk: int | None = None
    # Keeps finished sequences' KV and restores the longest matching prefix (`start`).
    prefix_cache: bool = False
    # Sequences whose prompts one forward can take together (`extend_batch`); 1: one at a time.
    prefill_rows: int = 1
    # A decode step can carry prompt pieces in the same forward (`decode_and_extend`).
    mixed_steps: bool = False
    # A decode step can feed proposed tokens after each sequence's next one, with logits
    # after every row, and drop the rejected ones' KV (`decode_drafts`, `trim`).
    drafts: bool = False
    # A draft model guesses the proposed tokens (`propose`).
    draft_model: bool = False
    # KV cells every running sequence draws on, one per position it holds; None: each
    # sequence has room for a whole context of its own. With a pool, the device feeds
    # only what fits and moves a stream's KV out to host memory (`park`) to make room.
    kv_cells: int | None = None


class DeviceBackend(abc.ABC):
    """All methods are synchronous and are called from one dedicated thread (the
    Axelera runtime requires a single thread; torch is simply happier so)."""

    info: BackendInfo
    capabilities: Capabilities

    @abc.abstractmethod
    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        """Start `seq_id` from `token_ids`; return float32 logits (vocab,) for the
        next token. Allocates the sequence's KV."""

    def extend(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        """Feed more prompt tokens to a started sequence (a chunk of a long prompt);
        return float32 logits (vocab,) after the last. Only called when
        `capabilities.prefill_chunk` is set."""
        raise NotImplementedError(f"{type(self).__name__} cannot extend a sequence")

    def extend_batch(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]]) -> np.ndarray:
        """Feed each started sequence its piece of prompt, in one forward where the
        backend can; return float32 logits (len(seq_ids), vocab) after each piece.
        Only called when `capabilities.prefill_rows` > 1."""
        return np.stack([self.extend(seq_id, piece) for seq_id, piece in zip(seq_ids, pieces, strict=True)])

    @abc.abstractmethod
    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Feed one token to each sequence; return float32 logits (len(seq_ids), vocab)."""

    def decode_and_extend(
        self,
        seq_ids: Sequence[int],
        token_ids: Sequence[int],
        chunk_seqs: Sequence[int],
        chunks: Sequence[Sequence[int]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """A decode step for `seq_ids` and a prompt piece for each of the started
        `chunk_seqs`, in one forward where the backend can (`capabilities.mixed_steps`):
        the weights are read once for all, so the pieces add little to the step. Returns
        the decode logits (len(seq_ids), vocab) and the pieces' (len(chunk_seqs), vocab),
        after each piece."""
        return self.decode(seq_ids, token_ids), self.extend_batch(chunk_seqs, chunks)

    def decode_drafts(
        self, seq_ids: Sequence[int], token_ids: Sequence[int], drafts: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """A decode step that also feeds each sequence its proposed tokens `drafts` (which
        may be empty) after its next token, in one forward; returns for each sequence
        float32 logits (1 + n, vocab), after each token it was fed: n is len(draft), or
        fewer where the backend had no room for the proposals (then it fed the first n). Backends
        without `capabilities.drafts` are only ever asked with empty drafts."""
        if any(drafts):
            raise NotImplementedError(f"{type(self).__name__} cannot verify drafts")
        return [row[None] for row in self.decode(seq_ids, token_ids)]

    def propose(
        self,
        seq_ids: Sequence[int],
        histories: Sequence[Sequence[int]],
        prompt_lengths: Sequence[int],
        lengths: Sequence[int],
    ) -> list[list[int]]:
        """The draft model's guesses, `lengths[i]` (or fewer) for the tokens after
        `histories[i]`: everything sequence `seq_ids[i]` has chosen (its prompt, the
        first `prompt_lengths[i]`, then its reply, its next token last). Only called
        when `capabilities.draft_model` is set."""
        raise NotImplementedError(f"{type(self).__name__} has no draft model")

    def trim(self, seq_id: int, drop: int) -> None:  # noqa: B027 - only backends with drafts
        """Forget the KV of the last `drop` tokens fed to `seq_id` (rejected drafts)."""

    def start(self, seq_id: int, prompt_ids: Sequence[int], salt: str) -> int:
        """Begin `seq_id` with the KV of the longest cached prefix of `prompt_ids`
        kept under `salt` (never all of it: the last token must be fed to get logits).
        Returns how many prompt tokens that covers; the rest comes through `extend`.
        Only called when `capabilities.prefix_cache` is set or `prefill_rows` > 1 (a
        backend without a cache then starts the sequence empty and returns 0)."""
        raise NotImplementedError(f"{type(self).__name__} has no prefix cache")

    @abc.abstractmethod
    def release(self, seq_id: int, keep: tuple[str, list[int]] | None = None) -> None:
        """Free the sequence's KV, or with `keep=(salt, token_ids)` (the tokens its KV
        covers) hand it to the prefix cache. Releasing an unknown sequence is a no-op."""

    def park(self, seq_id: int) -> None:
        """Move the sequence's KV to host memory, freeing its cells (`unpark` brings it
        back). Only called when `capabilities.kv_cells` is set."""
        raise NotImplementedError(f"{type(self).__name__} has no KV pool")

    def unpark(self, seq_id: int) -> bool:
        """The parked sequence's KV back in cells; False when the pool has no room for
        it now (it stays parked)."""
        raise NotImplementedError(f"{type(self).__name__} has no KV pool")

    @abc.abstractmethod
    def live_sequences(self) -> int:
        """How many sequences hold KV now."""

    def prefix_cache_usage(self) -> tuple[int, int]:
        """(entries, bytes) held by the prefix cache."""
        return 0, 0

    def forget_prefixes(self, connection: str) -> None:  # noqa: B027 - only backends with a prefix cache
        """Drop the prefix-cache entries of a connection that is gone (every salt that
        is `connection` or starts with `connection/`)."""

    def temperature_c(self) -> float | None:
        """Device temperature if the backend can read one."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most backends have nothing to free
        """Free the device. Called once, from the device thread."""
