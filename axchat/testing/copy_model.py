"""A model that repeats a passage from its prompt, at the cost of a benchmark shape:
a small copier (copy_training.py) embedded exactly into the SmolLM2-135M or
Llama-3.2-1B shape, so a decode step reads as many weights as the real shape while the
output is the copier's. Prompt-lookup drafts need such a model to have anything to find.

Usage: ``python -m axchat.testing.copy_model [OUTDIR] --shape smollm2-135m|llama-3.2-1b [--seed N] [--steps N] [--draft] [--verify]``

The embedding is `embedding.embed` (exact: zero-padded widths, pass-through layers and
heads, norm weights scaled for the padded width). The shape's ids beyond the tokenizer's
trained vocabulary take the `<|pad|>` row, a token the copier never saw as input nor as
target, which training pushed below every token it does predict: checked at build on
the benchmark's passages, those ids never win. `--verify` checks a built model against
the copier it holds (its logits, with transformers, in float32).

`--draft` also builds its draft model (OUTDIR-draft): the same copier taken back out of
it (`embedding.extract`) at its own small width and depth, with the shape's whole
vocabulary, tokenizer and special tokens, so it passes `--draft-model`'s vocabulary
check and guesses the copies the model makes, for a fraction of a step's cost.
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

from axchat.testing import copy_training, embedding, tiny_model
from axchat.testing.shapes import SHAPES

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

MODEL_NAME = "axchat-copy"
DRAFT_NAME = "axchat-copy-draft"
MARKER_FILE = "axchat_copy_model.json"
COPY_SHAPES = ("smollm2-135m", "llama-3.2-1b")


def default_dir(shape: str, seed: int = 0) -> Path:
    """Where the bench keeps a built copier: $XDG_CACHE_HOME/axchat/bench/copy-SHAPE-sSEED."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "axchat" / "bench" / f"copy-{shape}-s{seed}"


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
    ids = _special_ids(tokenizer)
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
    model = embedding.big_model(embedding.embed(small, config, tokenizer.pad_token_id), config, spec.dtype)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / MARKER_FILE).write_text(json.dumps({"torch": torch.__version__}))


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
    want = {"name": MODEL_NAME, "shape": shape, "seed": seed, "recipe": asdict(recipe)}
    return _ensure_built(
        outdir, want, lambda staging: _build_into(staging, shape=shape, seed=seed, recipe=recipe, progress=progress)
    )


def ensure_draft(source: Path, outdir: Path | None = None) -> Path:
    """The draft model of the copy model in `source` (module doc), in `outdir` (default:
    beside it, SOURCE-draft), built (seconds) only if it lacks that draft."""
    source = source.expanduser().absolute()
    marker = read_marker(source)
    if marker is None or marker.get("name") != MODEL_NAME:
        raise ValueError(f"{source} is not a copy model built by {__name__}")
    outdir = (outdir or source.with_name(source.name + "-draft")).expanduser().absolute()
    return _ensure_built(outdir, {**marker, "name": DRAFT_NAME}, lambda staging: _build_draft_into(staging, source))


def read_marker(outdir: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((outdir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _ensure_built(outdir: Path, want: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """`outdir`, built with `build(staging)` unless its marker already holds `want`'s
    items; the marker written is `want`'s plus what `build` wrote in it."""
    found = read_marker(outdir)
    if found is not None and all(found.get(k) == v for k, v in want.items()):
        return outdir
    if outdir.exists() and any(outdir.iterdir()) and found is None:
        raise FileExistsError(f"{outdir} exists and is not a model built by {__name__}; refusing to replace it")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        build(staging)
        (staging / MARKER_FILE).write_text(json.dumps({**(read_marker(staging) or {}), **want}, sort_keys=True) + "\n")
        if outdir.exists():
            shutil.rmtree(outdir)  # ours, built from another recipe
        os.rename(staging, outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outdir


def _copier_config(marker: dict[str, Any], ids: dict[str, Any]) -> Any:
    """The config of the copier a model built here holds (its marker says which)."""
    spec = SHAPES[marker["shape"]]
    recipe = copy_training.Recipe(**marker["recipe"])
    return copy_training.small_config(recipe, spec.config, spec.config["hidden_size"], spec.tokenizer_vocab, ids)


def _build_draft_into(staging: Path, source: Path) -> None:
    """The copier in `source`, read back out, with `source`'s vocabulary: ids past the
    copier's take its filler row, as they do in `source`. float32, so the norm weights
    are exactly what `source`'s amount to (`embedding` says why they are scaled)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source)
    big = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    small_config = _copier_config(read_marker(source) or {}, _special_ids(tokenizer))
    small = embedding.extract(big, small_config)
    config = type(small_config).from_dict({**small_config.to_dict(), "vocab_size": big.config.vocab_size})
    model = embedding.big_model(embedding.embed(small, config, tokenizer.pad_token_id), config, "float32")
    model.generation_config = big.generation_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / MARKER_FILE).write_text(json.dumps({"torch": torch.__version__}))


def _special_ids(tokenizer: Any) -> dict[str, Any]:
    return dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )


def verify(outdir: Path) -> float:
    """The largest difference between the logits of the model (or draft model) built in
    `outdir` and of the copier it holds (taken back out with `embedding.extract`), float32, over the
    benchmark's passages; ids past the copier's vocabulary are compared with `<|pad|>`'s."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(outdir)
    big = LlamaForCausalLM.from_pretrained(outdir, dtype=torch.float32).eval()
    small_config = _copier_config(read_marker(outdir) or {}, _special_ids(tokenizer))
    small = embedding.extract(big, small_config).eval()
    worst = 0.0
    corpus = tiny_model.CORPUS_PATH.read_text(encoding="utf-8")
    for passage in copy_training.held_out_passages(corpus):
        text = copy_training.prompt_text(passage) + passage + "<|im_end|>"
        x = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            want, got = small(x).logits, big(x).logits
        v = small_config.vocab_size
        filler = want[..., tokenizer.pad_token_id : tokenizer.pad_token_id + 1]
        worst = max(worst, float((got[..., :v] - want).abs().max()), float((got[..., v:] - filler).abs().max()))
    return worst


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
    parser.add_argument("--draft", action="store_true", help="and its draft model, in OUTDIR-draft (module doc)")
    parser.add_argument("--verify", action="store_true", help="then compare its logits with the copier's (float32)")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shot CLI needs no "Writing model shards" bar
    started = time.monotonic()
    recipe = copy_training.Recipe(steps=args.steps)
    path = ensure(
        args.outdir, shape=args.shape, seed=args.seed, recipe=recipe, progress=lambda s: print(s, file=sys.stderr)
    )
    print(f"{MODEL_NAME} shape={args.shape} seed={args.seed} -> {path} ({time.monotonic() - started:.0f}s)")
    built = [path]
    if args.draft:
        built.append(ensure_draft(path))
        print(f"{DRAFT_NAME} shape={args.shape} seed={args.seed} -> {built[-1]} ({time.monotonic() - started:.0f}s)")
    worst = 0.0
    for model in built if args.verify else []:
        diff = verify(model)
        worst = max(worst, diff)
        print(f"{model.name}: largest logit difference from the copier it holds: {diff:.2e}")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
