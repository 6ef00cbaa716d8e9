"""A converted model's tokenizer on libllama's vocabulary (the one the engine holds)
gives the `tokenizers` library's ids and text, on the bundled axchat-mini, the test
model and a SmolLM-style split; a tokenizer.json that libllama would split otherwise
keeps the library; the vocabulary outlives the engine's unload and is read from the
engine's own model while one is loaded."""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import pytest

from axchat.actors.backends.llamacpp import load, tokenizer_match, vocab_share
from axchat.actors.backends.llamacpp.vocab import LlamaTokenizer
from axchat.actors.tokenizer import end_of_turn_ids, load_tokenizer
from axchat.actors.tokenizer_json import JsonTokenizer
from axchat.models.catalog import BUNDLED_DIR
from axchat.testing import tiny_model

CORPUS = tiny_model.CORPUS_PATH.read_text(encoding="utf-8")
FIXED = [
    "",
    " ",
    "Hello, world!  How's it going?\n\n\tTabs\r\nand  spaces   ",
    "12345 3.14159 1,000,000 x2y3 2024-06-01",
    "naïve café déjà vu — “quotes” \u2018single\u2019 e\u0301",
    "日本語のテキスト、中文文本。한국어 Ελληνικά кириллица עברית العربية",
    "emoji 😀👍🏽 🇫🇷 family 👨\u200d👩\u200d👧",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "a<|im_end|>b <|pad|> <|begin_of_text|>x<|im_start|>",
    "I'm we'll they've you'd it's don't DON'T ''''",
    "\u00a0nbsp\u3000ideographic\u2009thin \x00\x01 control",
    "   leading",
    "trailing   \n\n\n",
]


def texts() -> list[str]:
    rng = random.Random(0)
    pieces = [CORPUS[i : i + rng.randint(1, 300)] for i in rng.sample(range(len(CORPUS) - 300), 150)]
    ranges = [(32, 126), (0xA0, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x1FAFF)]
    noise = [
        "".join(chr(rng.randint(*rng.choice(ranges))) if rng.random() < 0.8 else rng.choice(" \n\t") for _ in range(40))
        for _ in range(150)
    ]
    return FIXED + pieces + noise


def assert_alike(ours: LlamaTokenizer, library: JsonTokenizer) -> None:
    for text in texts():
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == library.encode(text, add_special_tokens=special), text
        ids = library.encode(text, add_special_tokens=False)
        for skip in (False, True):
            assert ours.decode(ids, skip) == library.decode(ids, skip), text
    rng = random.Random(1)
    size = len(library.get_vocab())
    for _ in range(200):  # any ids a model may sample, special ones among them
        ids = [rng.randrange(size) for _ in range(rng.randint(1, 12))]
        for skip in (False, True):
            assert ours.decode(ids, skip) == library.decode(ids, skip), ids
    assert ours.decode([5, size + 1000, 7]) == library.decode([5, size + 1000, 7])  # no such token: nothing
    assert ours.bos_token_id == library.bos_token_id and ours.eos_token_id == library.eos_token_id
    assert ours.special_tokens == library.special_tokens and ours.chat_template == library.chat_template
    assert ours.added_tokens() == library.added_tokens()
    assert end_of_turn_ids(ours) == end_of_turn_ids(library)
    assert max(map(len, ours.token_texts())) == max(map(len, library.token_texts()))


def smollm_split(source: Path, into: Path) -> Path:
    """The test model with SmolLM2's pre-tokenizer: each digit alone, then the GPT-2 split."""
    shutil.copytree(source, into)
    spec = json.loads((into / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, spec["pre_tokenizer"]],
    }
    (into / "tokenizer.json").write_text(json.dumps(spec))
    return into


@pytest.mark.parametrize("which", ["tiny", "axchat-mini", "smollm-split"])
def test_libllama_vocabulary_gives_the_tokenizers_library_ids_and_text(
    which: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = {"tiny": tiny_model_dir, "axchat-mini": BUNDLED_DIR}.get(which) or smollm_split(
        tiny_model_dir, tmp_path / "smollm"
    )
    gguf = load.gguf_for(model_dir, "f32", threads=1)
    assert load.read_metadata(gguf)["tokenizer.ggml.pre"] == ("smollm" if which == "smollm-split" else "gpt-2")
    assert_alike(LlamaTokenizer(gguf, model_dir), JsonTokenizer.from_dir(model_dir))


def test_the_daemon_tokenizes_a_converted_model_with_the_engine_vocabulary(
    tiny_model_dir: Path, llamacpp_f32_gguf: Path
) -> None:
    backend = load.load(str(tiny_model_dir), quant="f32", threads=1, prefix_cache_bytes=0)
    try:
        assert backend.info.vocab_gguf == str(llamacpp_f32_gguf)
        tokenizer = load_tokenizer(str(tiny_model_dir), backend.info.vocab_gguf)
        assert isinstance(tokenizer, LlamaTokenizer)
        before = tokenizer.encode("<|im_start|>user\nOnce upon a time<|im_end|>")
    finally:
        backend.close()
    # Unloaded (keep-alive): a vocabulary-only load stands in, with the same ids.
    assert tokenizer.encode("<|im_start|>user\nOnce upon a time<|im_end|>") == before
    again = load.load(str(tiny_model_dir), quant="f32", threads=1, prefix_cache_bytes=0)
    try:
        assert tokenizer.encode("<|im_start|>user\nOnce upon a time<|im_end|>") == before
    finally:
        again.close()


def test_a_tokenizer_libllama_would_split_otherwise_keeps_the_tokenizers_library(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    assert tokenizer_match.llama_pre_tokenizer(spec) == "gpt-2"
    for change in (
        {"normalizer": {"type": "NFC"}},
        {"pre_tokenizer": {**spec["pre_tokenizer"], "add_prefix_space": True}},
        {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}},
        {"model": {**spec["model"], "byte_fallback": True}},
        {"model": {**spec["model"], "ignore_merges": True}},
        {"added_tokens": [*spec["added_tokens"], {**spec["added_tokens"][0], "id": 999, "special": False}]},
        {"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|begin_of_text|>"}}]}},
    ):
        assert tokenizer_match.llama_pre_tokenizer({**spec, **change}) == tokenizer_match.NO_MATCH, change
    # Converted all the same, and the daemon tokenizes with the library.
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "nfc")
    (model_dir / "tokenizer.json").write_text(json.dumps({**spec, "normalizer": {"type": "NFC"}}))
    backend = load.load(str(model_dir), quant="f32", threads=1, prefix_cache_bytes=0)
    try:
        assert backend.info.vocab_gguf is None
        assert isinstance(load_tokenizer(str(model_dir), backend.info.vocab_gguf), JsonTokenizer)
    finally:
        backend.close()


def test_an_engine_frees_its_model_only_once_no_reader_is_inside_its_vocabulary(
    tiny_model_dir: Path, llamacpp_f32_gguf: Path
) -> None:
    backend = load.load(str(tiny_model_dir), quant="f32", threads=1, prefix_cache_bytes=0)
    share = vocab_share.share_of(llamacpp_f32_gguf)
    inside, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with share.vocab():
            inside.set()
            assert leave.wait(30)

    reading = threading.Thread(target=reader)
    reading.start()
    try:
        assert inside.wait(30)
        closing = threading.Thread(target=backend.close)
        closing.start()
        closing.join(0.5)
        assert closing.is_alive()  # waiting for the reader
    finally:
        leave.set()
        reading.join(30)
    closing.join(30)
    assert not closing.is_alive()
