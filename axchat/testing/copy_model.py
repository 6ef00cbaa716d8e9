"""A model that repeats a passage from its prompt, at the cost of a benchmark shape:
a small copier (copy_training.py) embedded exactly into the SmolLM2-135M or
Llama-3.2-1B shape, so a decode step reads as many weights as the real shape while the
output is the copier's. Prompt-lookup drafts need such a model to have anything to find.

Usage: ``python -m axchat.testing.copy_model OUTDIR --shape smollm2-135m|llama-3.2-1b [--seed N] [--steps N]``

The embedding (`embed`), for a residual stream that is the small one padded with zeros:
* hidden, intermediate and head dimensions are zero-padded; the copier's layers are the
  first ones, the shape's other layers have all-zero projections (the residual passes
  through them unchanged), and so do the extra attention heads;
* RMSNorm divides by the root mean square over the whole width, D wide instead of d, so
  every norm weight is scaled by sqrt(d/D); the copier was trained with epsilon·D/d,
  which is what the big norm's epsilon amounts to (then the two are equal, not close);
* the shape's head_dim and RoPE are the copier's, so a head moves over as it is: the
  copier's query head r of kv group j goes to the shape's head r of group j;
* the shape's vocabulary beyond the tokenizer's trained part takes the `<|pad|>` row
  (embedding and output), a token the copier never saw as input nor as target, which
  training pushed below every token it does predict: those ids never win.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from axchat.testing import copy_training, tiny_model
from axchat.testing.shapes import SHAPES

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

MODEL_NAME = "axchat-copy"
MARKER_FILE = "axchat_copy_model.json"
COPY_SHAPES = ("smollm2-135m", "llama-3.2-1b")


def default_dir(shape: str, seed: int = 0) -> Path:
    """Where the bench keeps a built copier: $XDG_CACHE_HOME/axchat/bench/copy-SHAPE-sSEED."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "axchat" / "bench" / f"copy-{shape}-s{seed}"


def _heads(config: Any) -> tuple[int, int, int]:
    """(query heads, kv heads, head_dim)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads, config.num_key_value_heads, head_dim


def _check_fits(small: Any, big: Any) -> None:
    sq, skv, sdim = _heads(small)
    bq, bkv, bdim = _heads(big)
    fits = (
        small.hidden_size <= big.hidden_size
        and small.intermediate_size <= big.intermediate_size
        and small.num_hidden_layers <= big.num_hidden_layers
        and small.vocab_size <= big.vocab_size
        and sdim == bdim
        and skv <= bkv
        and sq // skv <= bq // bkv
        and small.tie_word_embeddings == big.tie_word_embeddings
    )
    if not fits:
        raise ValueError("the small model does not fit in the big shape (sizes, head_dim, kv groups or tying)")


def _head_rows(small: Any, big: Any, kv: bool) -> list[tuple[slice, slice]]:
    """(small rows, big rows) of each query (or kv) head's projection."""
    sq, skv, dim = _heads(small)
    bq, bkv, _ = _heads(big)
    if kv:
        pairs = [(j, j) for j in range(skv)]
    else:
        sg, bg = sq // skv, bq // bkv
        pairs = [(i, (i // sg) * bg + i % sg) for i in range(sq)]
    return [(slice(s * dim, (s + 1) * dim), slice(b * dim, (b + 1) * dim)) for s, b in pairs]


def embed(small: LlamaForCausalLM, big_config: LlamaConfig, filler_id: int) -> dict[str, torch.Tensor]:
    """The big shape's float32 state dict that computes what `small` computes (see the module doc)."""
    import torch

    sc, bc = small.config, big_config
    _check_fits(sc, bc)
    d, big_d = sc.hidden_size, bc.hidden_size
    norm_scale = math.sqrt(d / big_d)
    src = {k: v.detach().float() for k, v in small.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def norm(name: str) -> None:
        w = torch.zeros(big_d)
        w[:d] = src[name] * norm_scale
        out[name] = w

    def vocab_matrix(name: str) -> None:
        w = torch.zeros(bc.vocab_size, big_d)
        w[: sc.vocab_size, :d] = src[name]
        w[sc.vocab_size :, :d] = src[name][filler_id]
        out[name] = w

    _, bkv, dim = _heads(bc)
    bq = bc.num_attention_heads
    for layer in range(bc.num_hidden_layers):
        p = f"model.layers.{layer}."
        proj = {
            "self_attn.q_proj": (bq * dim, big_d),
            "self_attn.k_proj": (bkv * dim, big_d),
            "self_attn.v_proj": (bkv * dim, big_d),
            "self_attn.o_proj": (big_d, bq * dim),
            "mlp.gate_proj": (bc.intermediate_size, big_d),
            "mlp.up_proj": (bc.intermediate_size, big_d),
            "mlp.down_proj": (big_d, bc.intermediate_size),
        }
        for name, size in proj.items():
            out[f"{p}{name}.weight"] = torch.zeros(size)
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + name] = torch.zeros(big_d)
        if layer >= sc.num_hidden_layers:
            continue  # a pass-through layer
        norm(p + "input_layernorm.weight")
        norm(p + "post_attention_layernorm.weight")
        for name, kv in (("q_proj", False), ("k_proj", True), ("v_proj", True)):
            for s_rows, b_rows in _head_rows(sc, bc, kv):
                out[f"{p}self_attn.{name}.weight"][b_rows, :d] = src[f"{p}self_attn.{name}.weight"][s_rows]
        for s_cols, b_cols in _head_rows(sc, bc, False):
            out[f"{p}self_attn.o_proj.weight"][:d, b_cols] = src[f"{p}self_attn.o_proj.weight"][:, s_cols]
        i = sc.intermediate_size
        for name in ("gate_proj", "up_proj"):
            out[f"{p}mlp.{name}.weight"][:i, :d] = src[f"{p}mlp.{name}.weight"]
        out[f"{p}mlp.down_proj.weight"][:d, :i] = src[f"{p}mlp.down_proj.weight"]
    norm("model.norm.weight")
    vocab_matrix("model.embed_tokens.weight")
    if not bc.tie_word_embeddings:
        vocab_matrix("lm_head.weight")
    return out


def big_model(state: dict[str, torch.Tensor], config: LlamaConfig, dtype: str) -> LlamaForCausalLM:
    """`config`'s model holding `state`, cast to `dtype`, without initialising weights first."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict({k: v.to(getattr(torch, dtype)) for k, v in state.items()}, strict=False, assign=True)
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # its buffers were on the meta device
    return model.eval()


def _build_into(
    staging: Path, *, shape: str, seed: int, recipe: copy_training.Recipe, progress: Callable[[str], None]
) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig

    spec = SHAPES[shape]
    tokenizer = tiny_model.build_tokenizer(
        spec.tokenizer_vocab, model_max_length=spec.config["max_position_embeddings"]
    )
    trained_vocab = len(tokenizer)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    small_config = copy_training.small_config(recipe, spec.config, spec.config["hidden_size"], trained_vocab, ids)
    corpus = tiny_model.CORPUS_PATH.read_text(encoding="utf-8")
    with _torch_threads(1):  # one thread: the same weights on any host, and no collapse on a busy one
        small = copy_training.train(tokenizer, corpus, small_config, recipe, seed=seed, progress=progress)
    _check_filler_loses(small, tokenizer, corpus)
    if spec.vocab_size is not None and spec.vocab_size > trained_vocab:
        tiny_model._pad_vocabulary(tokenizer, spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        dtype=spec.dtype,
        **ids,
        **spec.config,
    )
    model = big_model(embed(small, config, tokenizer.pad_token_id), config, spec.dtype)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    marker = {"name": MODEL_NAME, "shape": shape, "seed": seed, "recipe": asdict(recipe), "torch": torch.__version__}
    (staging / MARKER_FILE).write_text(json.dumps(marker, sort_keys=True) + "\n")


def _check_filler_loses(small: LlamaForCausalLM, tokenizer: Any, corpus: str) -> None:
    """The filler row (every id past the trained vocabulary scores what it scores) must
    lose to the chosen token wherever the copier answers the benchmark's passages."""
    import torch

    margin = math.inf
    for passage in copy_training.held_out_passages(corpus):
        prompt = tokenizer.encode(copy_training.prompt_text(passage))
        reply = tokenizer.encode(passage + "<|im_end|>")
        with torch.no_grad():
            logits = small(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 :]
        margin = min(margin, float((logits.max(-1).values - logits[:, tokenizer.pad_token_id]).min()))
    if margin <= 0:
        raise RuntimeError(f"the copier's filler token can win (margin {margin:.3f}); train it longer")


class _torch_threads:
    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)


def _matches(outdir: Path, shape: str, seed: int, recipe: copy_training.Recipe) -> bool:
    try:
        marker = json.loads((outdir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("name") == MODEL_NAME
        and marker.get("shape") == shape
        and marker.get("seed") == seed
        and marker.get("recipe") == asdict(recipe)
    )


def ensure(
    outdir: Path | None = None,
    *,
    shape: str,
    seed: int = 0,
    recipe: copy_training.Recipe | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Path:
    """outdir (default: default_dir), built (trained, minutes on a CPU) only if it lacks this copier."""
    if shape not in COPY_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {COPY_SHAPES}")
    recipe = recipe or copy_training.Recipe()
    outdir = (outdir or default_dir(shape, seed)).expanduser().absolute()
    if _matches(outdir, shape, seed, recipe):
        return outdir
    if outdir.exists() and any(outdir.iterdir()) and not (outdir / MARKER_FILE).exists():
        raise FileExistsError(f"{outdir} exists and is not a model built by {__name__}; refusing to replace it")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        _build_into(staging, shape=shape, seed=seed, recipe=recipe, progress=progress)
        if outdir.exists():
            shutil.rmtree(outdir)  # ours, built from another recipe
        os.rename(staging, outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m axchat.testing.copy_model", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("outdir", type=Path, nargs="?", help="default: $XDG_CACHE_HOME/axchat/bench/copy-SHAPE-sSEED")
    parser.add_argument("--shape", choices=COPY_SHAPES, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=copy_training.Recipe.steps, help="training steps (default %(default)s)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    recipe = copy_training.Recipe(steps=args.steps)
    path = ensure(
        args.outdir, shape=args.shape, seed=args.seed, recipe=recipe, progress=lambda s: print(s, file=sys.stderr)
    )
    print(f"{MODEL_NAME} shape={args.shape} seed={args.seed} -> {path} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
