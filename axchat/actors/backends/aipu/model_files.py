"""Where a model's files come from for the aipu backend: a precompiled model's, from the
SDK's build tree; or, on the emulator (which compiles nothing), a Hugging Face model
directory with its input embeddings extracted once into the user's cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from axchat.actors.backends.aipu import runtime as rt
from axchat.actors.backends.aipu.build_tree import (
    compiled_model,
    default_build_root,
    find_embeddings,
    model_embeddings,
    tokenizer_source,
)
from axchat.actors.backends.aipu.embeddings import extract_embeddings
from axchat.actors.backends.base import ModelLoadError
from axchat.models.aipu_catalog import DEFAULT_DDR_GB, CatalogModel

log = logging.getLogger(__name__)

DEFAULT_EMULATED_CONTEXT = 1024


@dataclass(frozen=True)
class ModelFiles:
    name: str  # what clients see and may ask for
    model: Path  # what the runtime's load_model takes
    embeddings: Path
    tokenizer: str  # a directory or a hub id
    context: int  # the static context
    need_gb: float  # card memory


def build_tree_files(
    entry: CatalogModel, build_root: str | None, context: int | None, tokenizer_dir: str | None
) -> ModelFiles:
    """A precompiled model's files, from the SDK's build tree."""
    if context is not None and context != entry.context:
        raise ModelLoadError(f"{entry.name} was compiled for a context of {entry.context}; --context cannot change it")
    root = Path(build_root) if build_root else default_build_root()
    return ModelFiles(
        name=entry.name,
        model=compiled_model(root, entry),
        embeddings=model_embeddings(root, entry),
        tokenizer=tokenizer_source(root, entry, tokenizer_dir),
        context=entry.context,
        need_gb=entry.ddr_gb,
    )


def model_dir_files(model_dir: Path, context: int | None, tokenizer_dir: str | None) -> ModelFiles:
    """A Hugging Face model directory for the emulator, which compiles nothing."""
    if not (model_dir / "config.json").is_file():
        raise rt.FilesMissing("a Hugging Face model directory or a Metis catalog name", str(model_dir))
    try:
        embeddings = emulator_embeddings(model_dir)
    except (OSError, ValueError) as exc:
        raise ModelLoadError.because(f"cannot extract the input embeddings of {model_dir}", exc) from None
    return ModelFiles(
        name=model_dir.resolve().name,
        model=model_dir,
        embeddings=embeddings,
        tokenizer=tokenizer_dir or str(model_dir),
        context=context or _emulated_context(model_dir),
        need_gb=DEFAULT_DDR_GB,
    )


def _emulated_context(model_dir: Path) -> int:
    try:
        positions = int(json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings") or 0)
    except (OSError, ValueError):
        positions = 0
    return min(DEFAULT_EMULATED_CONTEXT, positions) if positions else DEFAULT_EMULATED_CONTEXT


def emulator_embeddings(model_dir: Path) -> Path:
    """The model's own `embeddings.npz`, else one extracted once into the user's cache."""
    local = find_embeddings(model_dir)
    if local is not None:
        return local
    stamp = f"{model_dir.resolve()}:{max((p.stat().st_mtime_ns for p in model_dir.glob('*.safetensors')), default=0)}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "axchat" / "aipu-embeddings"
    out = cache / f"{model_dir.name}-{key}.npz"
    if not out.exists():
        log.info("extracting input embeddings of %s into %s", model_dir, out)
        extract_embeddings(str(model_dir), out)
    return out
