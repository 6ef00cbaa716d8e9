"""Whether a draft model speaks the model's vocabulary: its proposals are token ids, so
the same id must be the same token in both, and the special tokens the same ids. Read
from a GGUF by libllama (vocabulary only, no weights) or, for a Hugging Face directory
not converted yet (`serve --check`), from the files the conversion would write."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The special tokens compared, as libllama names them; a Hugging Face directory names
# only the first, second and fourth in its tokenizer_config.json.
SPECIAL = ("bos", "eos", "eot", "pad")


@dataclass(frozen=True)
class Vocabulary:
    texts: tuple[str, ...]  # token id -> its text as the file stores it
    special: dict[str, int] = field(default_factory=dict)  # of SPECIAL, those the file names


def of_gguf(path: Path) -> Vocabulary:
    import llama_cpp

    from axchat.actors.backends.llamacpp import engine

    model = engine.load_vocab_only(path, "the vocabulary of ")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        texts = tuple(llama_cpp.llama_vocab_get_text(vocab, i).decode(errors="replace") for i in range(n))
        special = {name: int(getattr(llama_cpp, f"llama_vocab_{name}")(vocab)) for name in SPECIAL}
        return Vocabulary(texts, {name: i for name, i in special.items() if 0 <= i < n})
    finally:
        llama_cpp.llama_model_free(model)


def of_hf_dir(model_dir: Path) -> Vocabulary:
    from axchat.actors.backends.llamacpp import gguf_convert

    size = int(gguf_convert.read_config(model_dir)["vocab_size"])
    keys = gguf_convert.gguf_vocabulary(model_dir, size)
    named = {name: keys.get(f"{name}_token") for name in SPECIAL}
    return Vocabulary(tuple(keys["tokens"]), {name: int(i) for name, i in named.items() if i is not None})


def difference(model: Vocabulary, draft: Vocabulary) -> str | None:
    """What differs, as the end of a sentence about the draft model; None when nothing does.
    A special token only one of the two names is not compared (a directory names fewer)."""
    if len(model.texts) != len(draft.texts):
        return f"it has {len(draft.texts)} tokens, the model {len(model.texts)}"
    for i, (mine, theirs) in enumerate(zip(model.texts, draft.texts, strict=True)):
        if mine != theirs:
            return f"its token {i} is {theirs!r}, the model's {mine!r}"
    for name in SPECIAL:
        if name in model.special and name in draft.special and model.special[name] != draft.special[name]:
            return f"its {name} token is {draft.special[name]}, the model's {model.special[name]}"
    return None
