"""Tests for axchat.testing.embedding and copy_training, which build the benchmark's copy
model: a small model embedded in a bigger shape computes the same logits (the copier
costs what the shape costs, and copies as the small model does)."""

from __future__ import annotations

import pytest

from axchat.testing import copy_training, embedding
from axchat.testing.shapes import SHAPES

SMALL = copy_training.Recipe(hidden=48, intermediate=96, layers=2, heads=4, kv_heads=2)
SPECIAL = dict(bos_token_id=0, eos_token_id=2, pad_token_id=3)
FILLER = 3
SMALL_VOCAB = 200


def big_config(rope_from: str, tied: bool) -> dict:
    """A shape with every size above the small model's, and `rope_from`'s RoPE and epsilon."""
    real = SHAPES[rope_from].config
    return dict(
        hidden_size=192,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=real["max_position_embeddings"],
        rope_parameters=real["rope_parameters"],
        rms_norm_eps=real["rms_norm_eps"],
        tie_word_embeddings=tied,
    )


@pytest.mark.parametrize("rope_from", ["smollm2-135m", "llama-3.2-1b"])
@pytest.mark.parametrize("tied", [True, False])
def test_embedded_model_computes_the_small_ones_logits(rope_from: str, tied: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    big = big_config(rope_from, tied)
    torch.manual_seed(0)
    small = LlamaForCausalLM(copy_training.small_config(SMALL, big, big["hidden_size"], SMALL_VOCAB, SPECIAL)).eval()
    with torch.no_grad():  # trained norms are not all ones: make the scaling show
        for name, p in small.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    config = LlamaConfig(vocab_size=300, hidden_act="silu", **SPECIAL, **big)
    model = embedding.big_model(embedding.embed(small, config, FILLER), config, "float32")
    ids = torch.randint(4, SMALL_VOCAB, (2, 300))  # long enough for llama3 RoPE's scaled frequencies to matter
    with torch.no_grad():
        want = small(ids).logits
        got = model(ids).logits
    assert got.shape == (2, 300, 300)
    torch.testing.assert_close(got[..., :SMALL_VOCAB], want, rtol=1e-4, atol=1e-4)
    # Every id beyond the small vocabulary scores exactly what the filler token does.
    torch.testing.assert_close(
        got[..., SMALL_VOCAB:], want[..., FILLER : FILLER + 1].expand(-1, -1, 100), rtol=1e-4, atol=1e-4
    )
    # And the small model read back out of the big one is the small model.
    back = embedding.extract(model, small.config)
    for name, value in small.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value, rtol=1e-6, atol=1e-6, msg=name)


def test_a_shape_too_small_is_refused() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    big = big_config("smollm2-135m", True)
    small = LlamaForCausalLM(copy_training.small_config(SMALL, big, big["hidden_size"], SMALL_VOCAB, SPECIAL))
    narrow = LlamaConfig(
        vocab_size=300, **SPECIAL, **{**big, "num_key_value_heads": 1}
    )  # 6 query heads a group, 2 kv heads needed
    with pytest.raises(ValueError, match="does not fit"):
        embedding.embed(small, narrow, FILLER)


def test_training_examples_score_the_reply_only() -> None:
    from axchat.testing import tiny_model

    tokenizer = tiny_model.build_tokenizer(1000)
    corpus = tiny_model.CORPUS_PATH.read_text(encoding="utf-8")
    examples = copy_training._examples(tokenizer, corpus, SMALL, 4, seed=0)
    _, labels = copy_training._batch(examples, tokenizer.pad_token_id)
    for row, (ids, reply) in enumerate(examples):
        text = tokenizer.decode(ids[reply:])
        assert text.endswith("<|im_end|>")
        assert copy_training.COPY_INSTRUCTION + text.removesuffix("<|im_end|>") in tokenizer.decode(ids[:reply])
        assert (labels[row, :reply] == -100).all()
        assert labels[row, reply : len(ids)].tolist() == ids[reply:]
    # The benchmark's passages are held out from training.
    held = copy_training.held_out_passages(corpus)
    assert held and not any(p in tokenizer.decode(ids) for p in held for ids, _ in examples)


def test_the_draft_model_keeps_the_copy_models_vocabulary(tmp_path) -> None:
    """The draft builder on an untrained copier embedded in the tiny shape, its vocabulary
    padded past the tokenizer's as the benchmark shapes' are: the draft is the copier's
    size, passes the vocabulary check `serve --draft-model` makes on a model directory,
    and computes the copier's logits."""
    import json
    from dataclasses import asdict

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from axchat.actors.backends.llamacpp import same_vocabulary
    from axchat.testing import copy_model, tiny_model

    spec = SHAPES["tiny"]
    recipe = copy_training.Recipe(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1)
    tokenizer = tiny_model.build_tokenizer(spec.tokenizer_vocab)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    small = LlamaForCausalLM(
        copy_training.small_config(recipe, spec.config, spec.config["hidden_size"], len(tokenizer), ids)
    ).eval()
    tiny_model._pad_vocabulary(tokenizer, spec.tokenizer_vocab + 100)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_act="silu", **ids, **spec.config)
    source = tmp_path / "copy"
    embedding.big_model(embedding.embed(small, config, tokenizer.pad_token_id), config, "float32").save_pretrained(source)
    tokenizer.save_pretrained(source)
    marker = {"name": copy_model.MODEL_NAME, "shape": "tiny", "seed": 0, "recipe": asdict(recipe)}
    (source / copy_model.MARKER_FILE).write_text(json.dumps(marker))

    draft = copy_model.ensure_draft(source)

    assert draft == tmp_path / "copy-draft"
    built = json.loads((draft / "config.json").read_text())
    assert (built["hidden_size"], built["num_hidden_layers"]) == (recipe.hidden, recipe.layers)
    assert built["vocab_size"] == len(tokenizer)
    model_vocab = same_vocabulary.of_hf_dir(source)
    assert len(model_vocab.texts) == len(tokenizer) and model_vocab.special
    assert same_vocabulary.difference(model_vocab, same_vocabulary.of_hf_dir(draft)) is None
    assert copy_model.verify(draft) < 1e-4
    # Built once: a second call finds it.
    mtime = (draft / "model.safetensors").stat().st_mtime_ns
    assert copy_model.ensure_draft(source) == draft
    assert (draft / "model.safetensors").stat().st_mtime_ns == mtime
