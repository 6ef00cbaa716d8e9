"""Which of libllama's BPE pre-tokenizers splits text as a Hugging Face `tokenizer.json`
does, when one does exactly: then a converted model's GGUF says so, and the daemon
encodes and decodes with the vocabulary libllama already holds for the model instead of
loading a second copy through the `tokenizers` library.

Only recipes known to match id for id are named (tests/actors/backends/test_llama_vocab.py
compares the two on the bundled and test models); anything else keeps "default", and the
`tokenizers` library tokenizes as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The GGUF key's value for "not known to match": libllama's own default split.
NO_MATCH = "default"
# Byte-level BPE with the GPT-2 split, as GPT-2's own tokenizer (and axchat's test models).
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
# SmolLM's: each digit alone, then the GPT-2 split.
_DIGITS = {"type": "Digits", "individual_digits": True}


def _is(step: Any, want: Mapping[str, Any]) -> bool:
    return isinstance(step, Mapping) and all(step.get(k) == v for k, v in want.items())


def _pre_tokenizer(pre: Any) -> str | None:
    if _is(pre, _BYTE_LEVEL):
        return "gpt-2"
    steps = pre.get("pretokenizers") if _is(pre, {"type": "Sequence"}) else None
    if isinstance(steps, list) and len(steps) == 2 and _is(steps[0], _DIGITS) and _is(steps[1], _BYTE_LEVEL):
        return "smollm"
    return None


def _adds_nothing(post: Any) -> bool:
    """A post-processor that adds no tokens: the tokenizer actor adds bos/eos itself
    from tokenizer_config.json, as transformers does."""
    if post is None or _is(post, {"type": "ByteLevel"}):
        return True
    return (
        _is(post, {"type": "TemplateProcessing"})
        and post.get("single") == [{"Sequence": {"id": "A", "type_id": 0}}]
        and not post.get("special_tokens")
    )


def _plain_bpe(model: Any) -> bool:
    return (
        _is(model, {"type": "BPE", "byte_fallback": False, "ignore_merges": False})
        and model.get("dropout") is None
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
    )


def _plain_added(added: Any) -> bool:
    """Added tokens libllama splits out as the library does: special ones (written as
    control tokens), matched where they stand, nothing stripped around them."""
    return isinstance(added, list) and all(
        _is(a, {"special": True, "lstrip": False, "rstrip": False, "single_word": False}) for a in added
    )


def llama_pre_tokenizer(spec: Mapping[str, Any]) -> str:
    """The `tokenizer.ggml.pre` under which libllama's tokenizer gives the same ids as
    `spec` (a parsed tokenizer.json), or NO_MATCH."""
    if spec.get("normalizer") is not None or not _plain_bpe(spec.get("model")):
        return NO_MATCH
    if not _is(spec.get("decoder"), {"type": "ByteLevel"}) or not _adds_nothing(spec.get("post_processor")):
        return NO_MATCH
    if not _plain_added(spec.get("added_tokens") or []):
        return NO_MATCH
    return _pre_tokenizer(spec.get("pre_tokenizer")) or NO_MATCH
