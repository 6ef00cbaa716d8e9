"""Tests for axchat.testing.tiny_model: the random Llama model and byte-level tokenizer builder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from axchat.testing import tiny_model

TEXT = "héllo 日本 🙂"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.build(tmp_path_factory.mktemp("built") / "model", seed=0)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def test_config_is_tiny_llama(model, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig

    config = model.config
    assert isinstance(config, LlamaConfig)
    assert (config.hidden_size, config.intermediate_size) == (64, 128)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        2,
        4,
        2,
    )
    assert config.max_position_embeddings == 8192
    assert config.tie_word_embeddings is False
    assert config.vocab_size == len(tokenizer)
    assert model.dtype == torch.float32


def test_special_tokens(model, tokenizer) -> None:
    ids = tokenizer.convert_tokens_to_ids(list(tiny_model.SPECIAL_TOKENS))
    assert ids == [0, 1, 2, 3]
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id == 3


def test_round_trips_utf8_without_implicit_special_tokens(tokenizer) -> None:
    ids = tokenizer(TEXT)["input_ids"]
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert tokenizer.decode(ids) == TEXT


def test_multibyte_characters_split_across_tokens(tokenizer) -> None:
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1
    # A lone fragment of the emoji is not valid UTF-8, so it decodes to U+FFFD.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    assert tokenizer.decode(ids) == "🙂"


def test_chat_template(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not no_prompt.endswith("<|im_start|>assistant\n")

    # transformers 5 returns a BatchEncoding (dict-like) when tokenize=True.
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    assert ids == tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_generate_greedy(model, tokenizer) -> None:
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False
    )
    input_ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=5,
        )
    new = out[0, input_ids.shape[1] :]
    assert 1 <= len(new) <= 5
    assert all(0 <= int(i) < model.config.vocab_size for i in new)


def test_cli_build_is_deterministic(model_dir: Path, tmp_path: Path) -> None:
    # In-process to keep the suite fast (a subprocess pays ~6 s of torch/transformers import);
    # equality across separate processes was checked by hand.
    other = tmp_path / "again"
    assert tiny_model.main([str(other), "--seed", "0", "--shape", "tiny"]) == 0
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(model_dir / name) == _sha256(other / name), name


def test_seed_changes_weights_not_tokenizer(model_dir: Path, tmp_path: Path) -> None:
    other = tiny_model.build(tmp_path / "seed1", seed=1)
    assert _sha256(model_dir / "model.safetensors") != _sha256(other / "model.safetensors")
    assert _sha256(model_dir / "tokenizer.json") == _sha256(other / "tokenizer.json")


def test_ensure_builds_once(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "tiny-random"
    assert tiny_model.ensure(target) == target
    assert tiny_model.is_complete(target)
    weights = target / "model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.stat().st_ino)

    assert tiny_model.ensure(target) == target
    assert (weights.stat().st_mtime_ns, weights.stat().st_ino) == before
    # Staging and discarded directories are cleaned up; only the model remains.
    assert [p.name for p in target.parent.iterdir()] == ["tiny-random"]


def test_ensure_replaces_model_built_with_other_params(tmp_path: Path) -> None:
    target = tiny_model.build(tmp_path / "m", seed=1)
    old = _sha256(target / "model.safetensors")
    tiny_model.ensure(target, seed=2)
    assert tiny_model.is_complete(target, seed=2)
    assert _sha256(target / "model.safetensors") != old


def test_ensure_fills_empty_dir_but_refuses_foreign_one(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny_model.ensure(empty)
    assert tiny_model.is_complete(empty)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        tiny_model.ensure(foreign)
    assert (foreign / "notes.txt").read_text() == "not a model"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_default_model_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tiny_model.default_model_dir() == tmp_path / "axchat" / "models" / "tiny-random"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tiny_model.default_model_dir() == Path.home() / ".cache/axchat/models/tiny-random"
