"""Where the Voyager SDK's build directory keeps a precompiled model's files: the
compiled model, the input embeddings and the extracted tokenizer archive; and what to
run when they are missing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from axchat.actors.backends.aipu.runtime import FilesMissing
from axchat.models.aipu_catalog import CatalogModel

log = logging.getLogger(__name__)

# The SDK writes this file into the tokenizer directory once the archive is extracted.
TOKENIZER_MARKER = ".extracted_tokenizer"


def default_build_root() -> Path:
    framework = os.environ.get("AXELERA_FRAMEWORK")
    return Path(framework) / "build" if framework else Path("build")


def fetch_hint(name: str) -> str:
    """How the SDK's own docs fetch an LLM's files: one run of its runner."""
    return f"fetch it with the Voyager SDK: `axllm {name}` (1.5) or `./inference_llm.py {name} --prompt hi` (1.3/1.4)"


def find_embeddings(model_dir: Path) -> Path | None:
    for pattern in ("embeddings.npz", "embeddings.npy", "*embed*.npz", "*embed*.npy", "**/*embed*.np[yz]"):
        found = sorted(model_dir.glob(pattern))
        if found:
            return found[0]
    return None


def compiled_model(root: Path, entry: CatalogModel) -> Path:
    path = root / entry.name / "model" / "model.json"
    if not path.is_file():
        raise FilesMissing("the compiled model", str(path), f"{fetch_hint(entry.name)}, or pass --build-root")
    return path


def model_embeddings(root: Path, entry: CatalogModel) -> Path:
    found = find_embeddings(root / entry.name)
    if found is None:
        raise FilesMissing(
            "the input embeddings",
            str(root / entry.name / "embeddings.npz"),
            f"{fetch_hint(entry.name)}, or write them with "
            f"`axchat extract-embeddings {entry.hf_id} {root / entry.name / 'embeddings.npz'}`",
        )
    return found


def tokenizer_source(root: Path, entry: CatalogModel, tokenizer_dir: str | None = None) -> str:
    """The seed's order: `--tokenizer-dir`; else the archive its YAML names, extracted under
    `<build>/tokenizers/<org_model>/`; only then the Hugging Face hub (gated for Llama)."""
    if tokenizer_dir:
        if not Path(tokenizer_dir).is_dir():
            raise FilesMissing("the tokenizer directory", tokenizer_dir)
        return tokenizer_dir
    extracted = root / "tokenizers" / entry.tokenizer_dir_name
    if (extracted / TOKENIZER_MARKER).is_file() or (extracted / "tokenizer.json").is_file():
        return str(extracted)
    log.warning(
        "no tokenizer under %s; asking the Hugging Face hub for %s%s (%s, or pass --tokenizer-dir)",
        extracted,
        entry.hf_id,
        ", which is gated: it needs HF_TOKEN" if entry.hf_id.startswith("meta-llama/") else "",
        fetch_hint(entry.name),
    )
    return entry.hf_id
