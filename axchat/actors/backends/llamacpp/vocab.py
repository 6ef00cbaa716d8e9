"""The tokenizer interface (tokenizer.TextTokenizer) over libllama's vocabulary of a GGUF
file, the one the loaded engine already holds (vocab_share): for a .gguf served alone,
its special tokens and chat template from the file; for a Hugging Face model converted
to a GGUF that says libllama splits text as its tokenizer.json does (tokenizer_match),
everything but the vocabulary from the model's tokenizer files, so the ids are the
`tokenizers` library's own (tests/actors/backends/test_llama_vocab.py).

libllama's tokenizer functions only read the vocabulary, so any thread may call them."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from axchat.actors.backends.llamacpp import vocab_share
from axchat.actors.chat_template import ChatTemplate
from axchat.actors.tokenizer_files import TOKENIZER_FILE, TokenizerFiles

# Added tokens: control tokens (bos, eos, <|im_start|>...) are special in transformers'
# sense; user-defined ones are added but not special. Unused ones pad the vocabulary.
_ATTR_UNUSED = llama_cpp.LLAMA_TOKEN_ATTR_UNUSED
_ATTR_CONTROL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
_ATTR_ADDED = _ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED


class LlamaTokenizer:
    """Encode, decode and render chats for one model, on libllama's vocabulary."""

    def __init__(self, path: Path, model_dir: Path | None = None) -> None:
        """`model_dir`: the Hugging Face model `path` was converted from, whose files give
        the special tokens, the chat template and the rules (what encoding adds, how ids
        decode); None: the GGUF file's own."""
        self._share = vocab_share.share_of(path)
        self._files = TokenizerFiles.read(model_dir) if model_dir is not None else None
        self._json = model_dir / TOKENIZER_FILE if model_dir is not None else None
        self._found: dict[str, int | None] = {}
        # Each decoded token's bytes and whether it is special, learnt as replies use
        # them: a decode on the event loop then makes no libllama call for a token seen
        # before (a reply's tokens repeat). At most one entry per token in the vocabulary.
        self._piece_of: dict[int, tuple[bytes, bool]] = {}
        with self._share.vocab() as vocab:
            self._n = llama_cpp.llama_vocab_n_tokens(vocab)
            bos, eos = self._known(llama_cpp.llama_vocab_bos(vocab)), self._known(llama_cpp.llama_vocab_eos(vocab))
            named = {name: self._text(vocab, i) for name, i in (("bos_token", bos), ("eos_token", eos)) if i is not None}
        if self._files is None:
            self.special_tokens, self.chat_template = named, self._share.chat_template()
            self.bos_token_id, self.eos_token_id = bos, eos
        else:
            self.special_tokens, self.chat_template = self._files.special_tokens, self._files.template_source
            self.bos_token_id = self.token_id(self.special_tokens.get("bos_token"))
            self.eos_token_id = self.token_id(self.special_tokens.get("eos_token"))
        self._template = ChatTemplate(self.chat_template, self.special_tokens) if self.chat_template else None

    def _known(self, token: int) -> int | None:
        return token if 0 <= token < self._n else None

    @staticmethod
    def _text(vocab: Any, token: int) -> str:
        return bytes(llama_cpp.llama_vocab_get_text(vocab, token)).decode(errors="replace")

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        data = text.encode()
        room = len(data) + 8
        buf = (llama_cpp.llama_token * room)()
        # As the Hugging Face files say, bos and eos are added here, not by libllama.
        llama_adds = add_special_tokens and self._files is None
        with self._share.vocab() as vocab:
            # Special tokens written in the text are parsed as the tokens they name, as transformers does.
            n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, room, llama_adds, True)
        ids = list(buf[:n])
        if add_special_tokens and self._files is not None:
            if self._files.add_bos and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self._files.add_eos and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        if self._files is not None:
            return self._pieces(ids, skip_special_tokens).decode(errors="replace")
        tokens = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        room = 64 + 32 * len(ids)
        out = ctypes.create_string_buffer(room)
        with self._share.vocab() as vocab:
            n = llama_cpp.llama_detokenize(vocab, tokens, len(ids), out, room, skip_special_tokens, not skip_special_tokens)
            if n < 0:  # a token longer than we guessed: llama.cpp says how much room it needs
                out = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_detokenize(vocab, tokens, len(ids), out, -n, skip_special_tokens, not skip_special_tokens)
        return out.raw[:n].decode(errors="replace")

    def _pieces(self, ids: Sequence[int], skip_special: bool) -> bytes:
        """Each token's bytes, joined: the `tokenizers` library's byte-level decode.
        (llama_detokenize would also drop spaces before punctuation for this split.)"""
        pieces = self._piece_of
        if any(token not in pieces for token in ids):
            self._learn_pieces(ids)
        out = []
        for token in ids:
            piece, special = pieces[token]
            if not (skip_special and special):
                out.append(piece)
        return b"".join(out)

    def _learn_pieces(self, ids: Sequence[int]) -> None:
        buf = ctypes.create_string_buffer(256)
        with self._share.vocab() as vocab:
            for token in ids:
                if token in self._piece_of:
                    continue
                if not 0 <= token < self._n:  # no such token: nothing, as the tokenizers library gives
                    self._piece_of[token] = (b"", False)
                    continue
                n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
                if n < 0:
                    buf = ctypes.create_string_buffer(-n)
                    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
                special = bool(llama_cpp.llama_vocab_get_attr(vocab, token) & _ATTR_CONTROL)
                self._piece_of[token] = (buf.raw[:n], special)

    def token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        if token not in self._found:
            self._found[token] = self._find(token)
        return self._found[token]

    def _find(self, token: str) -> int | None:
        # A special token's text encodes to that one token; any other entry is looked for.
        ids = self.encode(token, add_special_tokens=False)
        with self._share.vocab() as vocab:
            if len(ids) == 1 and self._text(vocab, ids[0]) == token:
                return ids[0]
            wanted = token.encode()
            return next((i for i in range(self._n) if bytes(llama_cpp.llama_vocab_get_text(vocab, i)) == wanted), None)

    def added_tokens(self) -> dict[int, str]:
        with self._share.vocab() as vocab:
            return {
                i: self._text(vocab, i) for i in range(self._n) if llama_cpp.llama_vocab_get_attr(vocab, i) & _ATTR_ADDED
            }

    def token_texts(self) -> Iterator[str]:
        """Each vocabulary entry as the tokenizer spells it; not the file's padding."""
        with self._share.vocab() as vocab:
            for i in range(self._n):
                if not llama_cpp.llama_vocab_get_attr(vocab, i) & _ATTR_UNUSED:
                    yield self._text(vocab, i)

    def get_vocab(self) -> dict[str, int]:
        with self._share.vocab() as vocab:
            return {self._text(vocab, i): i for i in range(self._n)}

    def llguidance_tokenizer(self, n_vocab: int, eos_ids: Sequence[int]) -> Any:
        """The constraint engine's tokenizer: from the model's tokenizer.json where there
        is one (llguidance reads it itself), else llguidance's own reader of a llama.cpp
        vocabulary, which keeps calling libllama, so it gets one that is never freed."""
        import llguidance as llg

        eos = list(eos_ids) or None
        if self._json is not None:
            return llg.LLTokenizer(self._json.read_text(encoding="utf-8"), n_vocab=max(n_vocab, self._n), eos_token=eos)
        from llguidance.llamacpp import lltokenizer_from_vocab

        return lltokenizer_from_vocab(self._share.pinned(), n_vocab=n_vocab, eos_token=eos)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        if self._template is None:
            raise ValueError("the model has no chat template")
        return self._template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)

