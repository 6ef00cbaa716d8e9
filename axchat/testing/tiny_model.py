"""Build a random-weight Llama causal LM plus a freshly trained byte-level BPE tokenizer
on disk, so tests and benchmarks can load a real `from_pretrained` model without a hub.

Usage: ``python -m axchat.testing.tiny_model OUTDIR [--seed N] [--shape tiny|smollm2-135m|llama-3.2-1b]``

Tokenizer choices (and why):

* Byte-level BPE (ByteLevel pre-tokenizer and decoder) trained on the bundled ``corpus.txt``:
  every UTF-8 string round-trips, and because the vocabulary is tiny, characters such as
  "日" or "🙂" are split over several tokens, each of which decodes alone to text containing
  U+FFFD. Tests of UTF-8-safe streaming rely on that.
* Shapes with a real model's vocabulary (smollm2-135m, llama-3.2-1b) pad the trained
  vocabulary to it with plain words, so every id decodes to visible text.
* Special tokens, in id order: ``<|begin_of_text|>`` (bos, id 0), ``<|im_start|>`` (1),
  ``<|im_end|>`` (eos, 2), ``<|pad|>`` (pad, 3).
* No post-processor: ``tokenizer(text)`` never inserts BOS/EOS implicitly, and the chat
  template adds no BOS either. What you encode is exactly what the model sees.
* ChatML chat template: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then
  ``<|im_start|>assistant\\n`` when ``add_generation_prompt=True``.

In transformers 5, ``tokenizer.apply_chat_template(msgs, add_generation_prompt=True,
tokenize=True)`` returns a ``BatchEncoding`` (a dict with ``input_ids`` and
``attention_mask``, each a flat ``list[int]`` for a single conversation), not a bare list of
ids as in transformers 4; pass ``return_dict=False`` to get the plain list.

The model's ``generation_config`` carries the tokenizer's bos/eos/pad ids so
``model.generate`` stops at ``<|im_end|>``. Output is deterministic for a given seed and shape.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Set before transformers is imported anywhere in this process: nothing here may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_NAME = "axchat-tiny-random"

BOS_TOKEN = "<|begin_of_text|>"
IM_START_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, IM_START_TOKEN, EOS_TOKEN, PAD_TOKEN)

# Escaped so the saved chat_template.jinja reads `\n`, not raw line breaks inside string literals.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

from axchat.testing.shapes import SHAPES  # noqa: E402  (after HF_HUB_OFFLINE is set)

CORPUS_PATH = Path(__file__).with_name("corpus.txt")

# Written last into the staging directory; records what was built so `ensure` can tell a
# model built with other parameters from the one it was asked for.
MARKER_FILE = "axchat_tiny_model.json"
# A directory holding these plus a matching marker is a complete model.
_REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER_FILE,
)


def default_model_dir() -> Path:
    """Where the shared tiny model is cached: $XDG_CACHE_HOME/axchat/models/tiny-random."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "axchat" / "models" / "tiny-random"


def build_tokenizer(
    vocab_size: int = 1000, *, model_max_length: int = 2048, texts: Iterable[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on texts (default: corpus.txt) and wrap it as a transformers fast tokenizer.

    training/train_mini.py passes its own corpus, so axchat-mini and the test model share one
    tokenizer recipe (special tokens, chat template, no implicit BOS).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Deliberately no post_processor: plain encoding must not grow a BOS behind the caller's back.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols up front, so bytes absent from the corpus still encode.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if texts is None:
        texts = [CORPUS_PATH.read_text(encoding="utf-8")]
    tok.train_from_iterator(texts, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START_TOKEN],
        model_max_length=model_max_length,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    # transformers 5 always installs a pass-through TemplateProcessing (add_bos_token=False);
    # clearing it keeps tokenizer.json saying plainly that no special tokens get added. On load,
    # transformers reinstalls the same pass-through processor, which is equivalent.
    fast._tokenizer.post_processor = None  # type: ignore[attr-defined]
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _pad_vocabulary(tokenizer: PreTrainedTokenizerFast, size: int) -> None:
    """Grow the vocabulary to the model's size with words (" w1234") that decode to
    visible text: random weights pick ids all over a large vocabulary, and ids that
    decode to nothing would make every streamed answer arrive as one late delta. No merge
    makes them, so encoding text is unchanged."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(len(tokenizer), size):
        word = f"\u0120w{i}"  # the byte-level alphabet's space, then the word
        vocab[word if word not in vocab else f"{word}_"] = i
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))  # type: ignore[attr-defined,assignment]


def _build_into(staging: Path, *, seed: int, shape: str) -> None:
    """Write tokenizer, config, weights and marker into an empty staging directory."""
    import torch
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    # transformers 4 would silently ignore `rope_parameters` (wrong RoPE for the large shapes)
    # and keeps a different tokenizer class; the spellings here are transformers 5's.
    if int(transformers.__version__.split(".")[0]) < 5:
        raise RuntimeError(f"{__name__} needs transformers>=5, found {transformers.__version__}")

    spec = SHAPES[shape]
    tokenizer = build_tokenizer(
        spec.tokenizer_vocab, model_max_length=spec.config["max_position_embeddings"]
    )
    if spec.vocab_size is not None and spec.vocab_size > len(tokenizer):
        _pad_vocabulary(tokenizer, spec.vocab_size)
    vocab_size = len(tokenizer)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        dtype=spec.dtype,
        **ids,
        **spec.config,
    )

    # Initialise in float32 under a fixed seed, then cast: same seed => bitwise-same weights,
    # independent of whatever default dtype the caller's process has set.
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    model = model.to(getattr(torch, spec.dtype)).eval()
    model.generation_config = GenerationConfig(**ids)

    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    marker = {"name": MODEL_NAME, "shape": shape, "seed": seed}
    (staging / MARKER_FILE).write_text(json.dumps(marker, sort_keys=True) + "\n")

    # mkdtemp makes the directory 0700 and the weights writer leaves 0600 files; a shared cache
    # should get the permissions the umask would give any ordinary file.
    # Probing with a fresh file reads the umask without os.umask(), which is process-wide and racy.
    probe = staging / ".umask-probe"
    probe.touch()
    file_mode = probe.stat().st_mode & 0o666
    probe.unlink()
    for path in staging.iterdir():
        path.chmod(file_mode)
    staging.chmod(file_mode | (file_mode & 0o444) >> 2)  # add x wherever r is granted


def _state(outdir: Path, *, seed: int, shape: str) -> str:
    """Classify outdir: 'missing', 'empty', 'match', 'mismatch' (ours, other params), 'foreign'."""
    if not outdir.exists():
        return "missing"
    if outdir.is_dir() and not any(outdir.iterdir()):
        return "empty"
    try:
        marker = json.loads((outdir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return "foreign"
    if marker.get("name") != MODEL_NAME:
        return "foreign"
    has_weights = (outdir / "model.safetensors").is_file() or (
        outdir / "model.safetensors.index.json"
    ).is_file()
    complete = has_weights and all((outdir / f).is_file() for f in _REQUIRED_FILES)
    if complete and marker.get("seed") == seed and marker.get("shape") == shape:
        return "match"
    return "mismatch"


def is_complete(outdir: str | Path, *, seed: int = 0, shape: str = "tiny") -> bool:
    """True if outdir holds a finished model built by this module with this seed and shape."""
    return _state(Path(outdir), seed=seed, shape=shape) == "match"


def _install(staging: Path, outdir: Path, *, seed: int, shape: str, replace: bool) -> None:
    """Atomically move a finished staging dir to outdir; a concurrent winner is kept."""
    for _ in range(5):
        state = _state(outdir, seed=seed, shape=shape)
        if state == "foreign":
            raise FileExistsError(
                f"{outdir} exists and is not a model built by {__name__}; refusing to replace it"
            )
        if state == "match" and not replace:
            return
        if state in ("match", "mismatch"):
            # rename(2) cannot replace a non-empty directory, so move the old model aside first.
            # Readers may briefly find outdir missing; ensure() callers never replace a match.
            _discard(outdir)
        try:
            # On POSIX this also replaces an empty directory sitting where the model goes.
            os.rename(staging, outdir)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Lost a race: another process installed a model between our check and rename.
            # Loop to judge what it installed, keeping it if it is the model we want.
            replace = False
    raise RuntimeError(f"could not install model at {outdir}: kept losing races")


def _discard(directory: Path) -> None:
    """Rename directory out of the way (atomic), then delete it at leisure."""
    graveyard = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
    try:
        os.rename(directory, graveyard / "model")
    except FileNotFoundError:
        pass  # a concurrent builder moved it first
    finally:
        shutil.rmtree(graveyard, ignore_errors=True)


def _stage_and_install(outdir: Path, *, seed: int, shape: str, replace: bool) -> Path:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
    outdir = outdir.expanduser().absolute()
    outdir.parent.mkdir(parents=True, exist_ok=True)
    # Staging beside outdir keeps the final rename on one file system, hence atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        _build_into(staging, seed=seed, shape=shape)
        _install(staging, outdir, seed=seed, shape=shape, replace=replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outdir


def build(outdir: str | Path, *, seed: int = 0, shape: str = "tiny") -> Path:
    """Build a model into outdir, replacing a model previously built there by this module."""
    return _stage_and_install(Path(outdir), seed=seed, shape=shape, replace=True)


def ensure(outdir: str | Path | None = None, *, seed: int = 0, shape: str = "tiny") -> Path:
    """Return outdir (default: default_model_dir()), building it only if it lacks this model."""
    outdir = Path(outdir) if outdir is not None else default_model_dir()
    if is_complete(outdir, seed=seed, shape=shape):
        return outdir.expanduser().absolute()
    return _stage_and_install(outdir, seed=seed, shape=shape, replace=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m axchat.testing.tiny_model",
        description="Write a random-weight Llama model and byte-level BPE tokenizer to OUTDIR.",
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    args = parser.parse_args(argv)
    from axchat.actors.backends.torch_engine import missing_extra

    if (why := missing_extra("building a test model")) is not None:
        print(f"{parser.prog}: error: {why}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shot CLI needs no "Writing model shards" bar

    started = time.monotonic()
    path = build(args.outdir, seed=args.seed, shape=args.shape)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(
        f"{MODEL_NAME} shape={args.shape} seed={args.seed} -> {path} "
        f"({size / 1e6:.1f} MB, {time.monotonic() - started:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
