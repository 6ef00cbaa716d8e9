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

import ctypes
import threading
from pathlib import Path
from typing import Any

import llama_cpp

from axchat.actors.backends.llamacpp import engine


class _Model:
    """A loaded model and its vocabulary pointer, with the readers inside it now."""

    __slots__ = ("model", "readers", "vocab")

    def __init__(self, model: Any) -> None:
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.readers = 0


class VocabShare:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._lenders: list[_Model] = []  # loaded engines' models, the first one read
        self._stand_in: _Model | None = None  # a vocabulary-only model while none lends one
        self._pinned: Any = None

    def vocab(self) -> _Reading:
        """`with share.vocab() as vocab:` the vocabulary (a `llama_vocab *`) for the time
        of the `with`; any thread."""
        return _Reading(self)

    def _enter(self) -> _Model:
        with self._lock:
            held = self._lenders[0] if self._lenders else self._stand_in_model()
            held.readers += 1
            return held

    def _leave(self, held: _Model) -> None:
        with self._lock:
            held.readers -= 1
            if not held.readers:
                self._drained.notify_all()

    def chat_template(self) -> str | None:
        """The chat template the file carries."""
        with self._lock:
            held = self._lenders[0] if self._lenders else self._stand_in_model()
            template = llama_cpp.llama_model_chat_template(held.model, None)
        return template.decode() if template else None

    def lend(self, model: Any) -> None:
        """An engine loaded `model`: readers use its vocabulary from now on."""
        with self._lock:
            self._lenders.append(_Model(model))
            stand_in, self._stand_in = self._stand_in, None
            if stand_in is not None:
                self._wait_unread(stand_in)
                llama_cpp.llama_model_free(stand_in.model)

    def take_back(self, model: Any) -> None:
        """Before the engine frees `model`: returns once no reader is inside it."""
        with self._lock:
            key = _address(model)
            for held in [h for h in self._lenders if _address(h.model) == key]:
                self._lenders.remove(held)
                self._wait_unread(held)

    def pinned(self) -> Any:
        """A vocabulary that lives as long as the process, for a library that keeps the
        pointer (llguidance's llama.cpp reader): a load of its own, made once."""
        with self._lock:
            if self._pinned is None:
                self._pinned = engine.load_vocab_only(self.path, "the vocabulary of ")
            return llama_cpp.llama_model_get_vocab(self._pinned)

    def _stand_in_model(self) -> _Model:
        if self._stand_in is None:
            self._stand_in = _Model(engine.load_vocab_only(self.path, "the vocabulary of "))
        return self._stand_in

    def _wait_unread(self, held: _Model) -> None:
        while held.readers:
            self._drained.wait()


class _Reading:
    """One reader inside the share's current vocabulary (a plain class: this runs for
    every decode on the event loop, where a generator-based context manager costs more
    than the libllama call it guards)."""

    __slots__ = ("_held", "_share")

    def __init__(self, share: VocabShare) -> None:
        self._share = share

    def __enter__(self) -> Any:
        self._held = self._share._enter()
        return self._held.vocab

    def __exit__(self, *exc: object) -> None:
        self._share._leave(self._held)


def _address(model: Any) -> int:
    return int(ctypes.cast(model, ctypes.c_void_p).value or 0)


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
