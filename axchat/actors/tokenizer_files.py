"""What a Hugging Face tokenizer directory says besides its vocabulary: the named special
tokens, whether encoding adds bos/eos, and the chat template, read as transformers 5
reads them. No `tokenizers` here: a model whose vocabulary libllama already holds never
loads that library (llamacpp/vocab.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axchat.actors.chat_template import SPECIAL_TOKEN_NAMES

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
LEGACY_SPECIAL_FILE = "special_tokens_map.json"  # older saves keep the named tokens here


class TokenizerFilesError(ValueError):
    """The directory's tokenizer files are missing or unreadable; one line."""


@dataclass(frozen=True)
class TokenizerFiles:
    special_tokens: dict[str, str]  # bos_token, eos_token... as their text
    config: dict[str, Any]  # tokenizer_config.json over special_tokens_map.json
    template_source: str | None

    @classmethod
    def read(cls, directory: Path) -> TokenizerFiles:
        config = {**_read_json(directory / LEGACY_SPECIAL_FILE), **_read_json(directory / CONFIG_FILE)}
        special = {name: text for name in SPECIAL_TOKEN_NAMES if (text := _token_text(config.get(name)))}
        return cls(special, config, _template_source(directory, config))

    def says_adds(self) -> bool:
        """The config decides what encoding adds (else the tokenizer.json's post-processor does)."""
        return "add_bos_token" in self.config or "add_eos_token" in self.config

    @property
    def add_bos(self) -> bool:
        return bool(self.config.get("add_bos_token"))

    @property
    def add_eos(self) -> bool:
        return bool(self.config.get("add_eos_token"))


def _token_text(value: Any) -> str | None:
    """A special token as a config spells it: a string, or an AddedToken's dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerFilesError(f"cannot read {path.name}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _template_source(directory: Path, config: Mapping[str, Any]) -> str | None:
    """chat_template.jinja wins over the config's copy, as in transformers; a config's list
    of named templates gives its `default`."""
    file = directory / TEMPLATE_FILE
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None
