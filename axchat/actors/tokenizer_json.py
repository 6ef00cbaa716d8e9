"""A Hugging Face tokenizer directory read without transformers: `tokenizer.json` through
the `tokenizers` library (the engine transformers' fast tokenizers wrap), the special
tokens and chat template from `tokenizer_config.json` / `chat_template.jinja`
(tokenizer_files.py), applied as transformers 5 applies them
(tests/actors/test_tokenizer_json.py compares the two)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors

from axchat.actors.chat_template import ChatTemplate
from axchat.actors.tokenizer_files import TOKENIZER_FILE, TokenizerFiles, TokenizerFilesError


def _clean_up_spaces(text: str) -> str:
    """transformers' clean_up_tokenization: spaces before punctuation and contractions go."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(before, after)
    return text


class JsonTokenizer:
    """Encode, decode and render chats for one model, from its tokenizer files."""

    def __init__(self, backend: Tokenizer, files: TokenizerFiles) -> None:
        self._backend = backend
        # The file may carry training-time truncation or padding; a prompt is encoded whole.
        backend.no_truncation()
        backend.no_padding()
        self.special_tokens = files.special_tokens
        self.bos_token_id = self.token_id(self.special_tokens.get("bos_token"))
        self.eos_token_id = self.token_id(self.special_tokens.get("eos_token"))
        if files.says_adds() or backend.post_processor is None:
            self._set_post_processor(files.add_bos, files.add_eos)
        # Only for non-BPE models, as transformers 5 does: on BPE it would eat real spaces.
        self._clean_up = bool(files.config.get("clean_up_tokenization_spaces")) and type(backend.model).__name__ != "BPE"
        self.chat_template = files.template_source
        self._template = ChatTemplate(files.template_source, self.special_tokens) if files.template_source else None

    @classmethod
    def from_dir(cls, directory: Path) -> JsonTokenizer:
        if not (directory / TOKENIZER_FILE).is_file():
            raise TokenizerFilesError(f"{directory} has no {TOKENIZER_FILE}")
        try:
            backend = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as exc:  # the Rust side raises plain Exception for a malformed file
            raise TokenizerFilesError(f"cannot read {TOKENIZER_FILE}: {exc}") from None
        return cls(backend, TokenizerFiles.read(directory))

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer` itself, for engines that take one (grammar masks)."""
        return self._backend

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        bos, eos = self.special_tokens.get("bos_token"), self.special_tokens.get("eos_token")
        add_bos, add_eos = add_bos and self.bos_token_id is not None, add_eos and self.eos_token_id is not None
        if not add_bos and not add_eos and self._backend.post_processor is None:
            return  # transformers installs a pass-through here: the same as none
        single = f"{f'{bos}:0 ' if add_bos else ''}$A:0{f' {eos}:0' if add_eos else ''}"
        pair = f"{single}{f' {bos}:1' if add_bos else ''} $B:1{f' {eos}:1' if add_eos else ''}"
        special = [(bos, self.bos_token_id)] if add_bos else []
        special += [(eos, self.eos_token_id)] if add_eos else []
        self._backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self._clean_up else text

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def added_tokens(self) -> dict[int, str]:
        return {i: t.content for i, t in self._backend.get_added_tokens_decoder().items()}

    def token_texts(self) -> Iterator[str]:
        """Each vocabulary entry as the tokenizer spells it, special tokens included."""
        for i in range(self._backend.get_vocab_size(with_added_tokens=True)):
            text = self._backend.id_to_token(i)
            if text is not None:
                yield text

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        if self._template is None:
            raise TokenizerFilesError("the model has no chat template")
        return self._template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
