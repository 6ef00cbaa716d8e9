"""One llama.cpp model and context through llama-cpp-python's C API: load, feed a batch
of tokens of several sequences in one `llama_decode`, read the logits, edit a sequence's
KV cells. Knows nothing of requests; `backend.py` maps those onto sequence ids here.

Every call must come from one thread (the device thread): llama.cpp's context is not
thread-safe, and this object keeps one batch that each call refills.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

log = logging.getLogger(__name__)


class EngineError(Exception):
    """llama.cpp refused a call; one line."""


class NoKvRoom(EngineError):
    """The KV cells are all taken by running sequences."""


# llama.cpp logs every tensor at load; only its warnings and errors belong in our log.
_GGML_LOG_WARN, _GGML_LOG_ERROR = 3, 4


# Expected here: one pool of cells for all sequences is larger than one sequence's context.
_EXPECTED = (b"n_ctx_seq",)


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if level in (_GGML_LOG_WARN, _GGML_LOG_ERROR) and text and text.strip() and not any(e in text for e in _EXPECTED):
        log.log(logging.ERROR if level == _GGML_LOG_ERROR else logging.WARNING, "llama.cpp: %s", text.decode(errors="replace").rstrip())


_initialised = False


def init_once() -> None:
    global _initialised
    if not _initialised:
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _initialised = True


def load_vocab_only(path: Path, what: str = "") -> Any:
    """A `llama_model *` of the GGUF at `path` with its vocabulary and metadata but no
    weights; the caller frees it (`llama_model_free`). `what`: what is read, for the error."""
    init_once()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise EngineError(f"llama.cpp cannot read {what}{path}")
    return model


def read_metadata(path: Path) -> dict[str, str]:
    """A GGUF file's key/values as strings (libllama reads only its header here)."""
    model = load_vocab_only(path)
    try:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(llama_cpp.llama_model_meta_count(model)):
            llama_cpp.llama_model_meta_key_by_index(model, i, buf, len(buf))
            key = buf.value.decode(errors="replace")
            llama_cpp.llama_model_meta_val_str_by_index(model, i, buf, len(buf))
            out[key] = buf.value.decode(errors="replace")
        # Arrays are not among the values above; the vocabulary's size is its token array's.
        vocab = llama_cpp.llama_model_get_vocab(model)
        out.setdefault(f"{out.get('general.architecture', 'llama')}.vocab_size", str(llama_cpp.llama_vocab_n_tokens(vocab)))
        return out
    finally:
        llama_cpp.llama_model_free(model)


class Engine:
    def __init__(
        self, path: Path, *, cells: int, sequences: int, batch: int, threads: int, exact: bool, unified: bool = True
    ) -> None:
        init_once()
        self.path = path
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise EngineError(f"llama.cpp cannot load {path} (see the log above)")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cells
        cparams.n_batch = batch
        cparams.n_ubatch = batch
        cparams.n_seq_max = sequences
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        # One pool of cells for every sequence (the daemon's): any one of them may fill
        # the context. `unified=False` gives each of `sequences` a fixed stream of
        # cells / sequences, as llama-server -np does (bench/burst_order.py compares them).
        cparams.kv_unified = unified
        cparams.no_perf = True
        cparams.embeddings = False
        if exact:
            # float32 weights are asked for to compute exactly (parity with transformers):
            # float32 KV, and attention without flash attention, whose tiles make a
            # sequence's result depend (by ~1e-5) on how many cells other sequences hold;
            # plain attention only adds exact zeros for them. Flash attention was faster
            # on long contexts in a quick check here (q8_0, 1k positions: ~45 against ~33
            # tokens/s), so other weight types keep llama.cpp's choice.
            cparams.type_k = llama_cpp.GGML_TYPE_F32
            cparams.type_v = llama_cpp.GGML_TYPE_F32
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise EngineError(f"llama.cpp cannot make a context of {cells} cells for {path}")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.cells = int(llama_cpp.llama_n_ctx(self.ctx))
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model)))
        self.batch_size = batch
        self._batch = llama_cpp.llama_batch_init(batch, 0, 1)
        # Views of the batch's arrays, made once: each step refills them in place.
        self._token = np.ctypeslib.as_array(self._batch.token, shape=(batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(batch,))
        self._out = np.ctypeslib.as_array(self._batch.logits, shape=(batch,))
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(batch,))[:] = 1
        self._seq = [self._batch.seq_id[i] for i in range(batch)]
        self._seq_now = [-1] * batch  # what each seq_id slot holds, to write only changes

    def set_threads(self, threads: int) -> None:
        """llama.cpp computes every batch, one token or many, with `threads`."""
        llama_cpp.llama_set_n_threads(self.ctx, threads, threads)

    def run(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], want: Sequence[int]) -> np.ndarray:
        """Feed tokens (each with its position and sequence id) and return float32 logits
        (len(want), vocab) after the tokens at the indices `want` (ascending)."""
        out = np.empty((len(want), self.vocab_size), dtype=np.float32)
        # Copied with memmove: a numpy view of llama.cpp's buffer (np.ctypeslib.as_array)
        # builds a ctypes array type per call, 0.6% of a one-stream decode in py-spy.
        out_at, row_bytes = out.ctypes.data, self.vocab_size * 4
        n_total = len(tokens)
        row = 0
        for start in range(0, n_total, self.batch_size):
            end = min(n_total, start + self.batch_size)
            n = end - start
            self._token[:n] = tokens[start:end]
            self._pos[:n] = positions[start:end]
            self._out[:n] = 0
            picked = [i - start for i in want[row:] if i < end]
            self._out[picked] = 1
            now = self._seq_now
            for i in range(n):
                s = seqs[start + i]
                if now[i] != s:
                    self._seq[i][0] = s
                    now[i] = s
            self._batch.n_tokens = n
            rc = llama_cpp.llama_decode(self.ctx, self._batch)
            if rc == 1:
                raise NoKvRoom(f"no room in the KV cache ({self.cells} cells) for {n} more tokens")
            if rc != 0:
                raise EngineError(f"llama_decode failed ({rc})")
            if picked:
                logits = llama_cpp.llama_get_logits(self.ctx)
                ctypes.memmove(out_at + row * row_bytes, logits, len(picked) * row_bytes)
                row += len(picked)
        return out

    def forget(self, seq: int, start: int = 0) -> None:
        """Drop the sequence's KV from position `start` on."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq, start, -1)

    def save(self, seq: int) -> np.ndarray:
        """A copy of the sequence's KV in host memory (llama.cpp's own sequence state)."""
        size = int(llama_cpp.llama_state_seq_get_size(self.ctx, seq))
        blob = np.empty(size, dtype=np.uint8)
        written = llama_cpp.llama_state_seq_get_data(self.ctx, blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size, seq)
        return blob[:written]

    def restore(self, blob: np.ndarray, seq: int) -> bool:
        """`blob` (from `save`) back into the empty sequence `seq`; False when the pool has
        no run of free cells for it (llama.cpp places a sequence's state contiguously)."""
        src = blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        return int(llama_cpp.llama_state_seq_set_data(self.ctx, src, blob.nbytes, seq)) > 0

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            self.ctx = None
