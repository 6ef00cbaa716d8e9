"""A GGUF file's own tokenizer and chat template through libllama, loaded vocabulary-only
(no weights): what serves a .gguf with no Hugging Face files beside it.

libllama's tokenizer functions read only the vocabulary, so any thread may call them."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from axchat.actors.backends.llamacpp import engine
from axchat.actors.chat_template import ChatTemplate

# llama_token_attr bits: a control token (bos, eos, <|im_start|>...) is special in transformers' sense.
_ATTR_CONTROL = 1 << 3


class GgufTokenizer:
    """The tokenizer interface of tokenizer_json.JsonTokenizer over libllama's vocabulary."""

    def __init__(self, path: Path) -> None:
        engine.init_once()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise engine.EngineError(f"llama.cpp cannot read the vocabulary of {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._texts = [llama_cpp.llama_vocab_get_text(self._vocab, i).decode(errors="replace") for i in range(self._n)]
        self.bos_token_id = self._known(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos_token_id = self._known(llama_cpp.llama_vocab_eos(self._vocab))
        self.special_tokens = {
            name: self._texts[i] for name, i in (("bos_token", self.bos_token_id), ("eos_token", self.eos_token_id)) if i is not None
        }
        template = llama_cpp.llama_model_chat_template(self._model, None)
        self.chat_template = template.decode() if template else None
        self._template = ChatTemplate(self.chat_template, self.special_tokens) if self.chat_template else None
        self._vocab_map = {text: i for i, text in enumerate(self._texts)}

    def _known(self, token: int) -> int | None:
        return token if 0 <= token < self._n else None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        data = text.encode()
        room = len(data) + 8
        buf = (llama_cpp.llama_token * room)()
        # Special tokens written in the text are parsed as the tokens they name, as transformers does.
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, room, add_special_tokens, True)
        return list(buf[:n])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        tokens = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        room = 64 + 32 * len(ids)
        out = ctypes.create_string_buffer(room)
        n = llama_cpp.llama_detokenize(self._vocab, tokens, len(ids), out, room, skip_special_tokens, not skip_special_tokens)
        if n < 0:  # a token longer than we guessed: llama.cpp says how much room it needs
            out = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_detokenize(self._vocab, tokens, len(ids), out, -n, skip_special_tokens, not skip_special_tokens)
        return out.raw[:n].decode(errors="replace")

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self._vocab_map.get(token)

    def added_tokens(self) -> dict[int, str]:
        return {
            i: self._texts[i] for i in range(self._n) if llama_cpp.llama_vocab_get_attr(self._vocab, i) & _ATTR_CONTROL
        }

    def token_texts(self) -> Iterator[str]:
        return iter(self._texts)

    def llguidance_tokenizer(self, n_vocab: int, eos_ids: Sequence[int]) -> Any:
        """The constraint engine's tokenizer from this vocabulary (there is no
        tokenizer.json to build it from): llguidance's own llama.cpp reader, which keeps
        calling libllama's tokenizer, so this object must outlive it (the daemon's does)."""
        from llguidance.llamacpp import lltokenizer_from_vocab

        return lltokenizer_from_vocab(self._vocab, n_vocab=n_vocab, eos_token=list(eos_ids) or None)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab_map)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        if self._template is None:
            raise ValueError("the model has no chat template")
        return self._template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)

    def __del__(self) -> None:
        if getattr(self, "_model", None):
            llama_cpp.llama_model_free(self._model)
