"""A GGUF file's vocabulary, one copy in the process: the loaded engine's model lends its
own to the tokenizer (a 49k vocabulary is ~10 MiB in libllama, and as much again in any
second tokenizer); while no engine holds the model (keep-alive unloaded it), a
vocabulary-only load of the file stands in, made when a reader first needs it.

The engine and the tokenizer find the same share by the file's path: they are loaded in
different places (the device loader, again after each keep-alive unload; the tokenizer
once), and neither owns the other. A model is freed only once no reader is inside its
vocabulary: readers never wait for a swap, a swap waits for the readers of the model it
frees (an encode in progress, at most)."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp

from axchat.actors.backends.llamacpp import engine


class VocabShare:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._lenders: list[Any] = []  # loaded engines' models, the first one read
        self._stand_in: Any = None  # a vocabulary-only model while none lends one
        self._readers: dict[int, int] = {}  # model address -> readers inside its vocabulary
        self._pinned: Any = None

    @contextlib.contextmanager
    def vocab(self) -> Iterator[Any]:
        """The vocabulary (a `llama_vocab *`) for the time of the `with`; any thread."""
        with self._lock:
            model = self._lenders[0] if self._lenders else self._stand_in_model()
            key = _address(model)
            self._readers[key] = self._readers.get(key, 0) + 1
        try:
            yield llama_cpp.llama_model_get_vocab(model)
        finally:
            with self._lock:
                self._readers[key] -= 1
                if not self._readers[key]:
                    del self._readers[key]
                    self._drained.notify_all()

    def chat_template(self) -> str | None:
        """The chat template the file carries."""
        with self._lock:
            model = self._lenders[0] if self._lenders else self._stand_in_model()
            template = llama_cpp.llama_model_chat_template(model, None)
        return template.decode() if template else None

    def lend(self, model: Any) -> None:
        """An engine loaded `model`: readers use its vocabulary from now on."""
        with self._lock:
            self._lenders.append(model)
            stand_in, self._stand_in = self._stand_in, None
            if stand_in is not None:
                self._wait_unread(stand_in)
                llama_cpp.llama_model_free(stand_in)

    def take_back(self, model: Any) -> None:
        """Before the engine frees `model`: returns once no reader is inside it."""
        with self._lock:
            if model in self._lenders:
                self._lenders.remove(model)
            self._wait_unread(model)

    def pinned(self) -> Any:
        """A vocabulary that lives as long as the process, for a library that keeps the
        pointer (llguidance's llama.cpp reader): a load of its own, made once."""
        with self._lock:
            if self._pinned is None:
                self._pinned = _vocab_only(self.path)
            return llama_cpp.llama_model_get_vocab(self._pinned)

    def _stand_in_model(self) -> Any:
        if self._stand_in is None:
            self._stand_in = _vocab_only(self.path)
        return self._stand_in

    def _wait_unread(self, model: Any) -> None:
        key = _address(model)
        while self._readers.get(key):
            self._drained.wait()


def _address(model: Any) -> int:
    return int(ctypes.cast(model, ctypes.c_void_p).value or 0)


def _vocab_only(path: Path) -> Any:
    engine.init_once()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise engine.EngineError(f"llama.cpp cannot read the vocabulary of {path}")
    return model


_shares: dict[Path, VocabShare] = {}
_shares_lock = threading.Lock()


def share_of(path: Path) -> VocabShare:
    """The one share of the file at `path`."""
    key = path.resolve()
    with _shares_lock:
        share = _shares.get(key)
        if share is None:
            share = _shares[key] = VocabShare(key)
        return share
