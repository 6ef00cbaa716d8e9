"""The local model store, `$XDG_DATA_HOME/axchat/models` (`~/.local/share/...`): one
directory per pulled model, named for the catalog name or the hub id (`org--name`).

A model directory appears only when complete (`axchat pull` renames a finished staging
directory into place), so whatever is here can be loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from axchat.models import catalog, ollama_store
from axchat.models.model_files import ModelFileError

# Hidden, so a half-pulled model never looks like a model; kept across runs so a pull resumes.
STAGING_DIR = ".partial"


def store_root() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "axchat" / "models"


def dir_name(name: str) -> str:
    """Where a catalog name or hub id lives in the store; a catalog model's hub id maps to
    its short name, so pulling either spelling fills the same directory."""
    if name in catalog.CATALOG:
        return name
    entry = catalog.by_hub_id(name)
    if entry is not None:
        return entry.name
    return name.replace("/", "--")


def display_name(directory: str) -> str:
    return directory if directory in catalog.CATALOG else directory.replace("--", "/", 1)


def pulled_dir(name: str, root: Path | None = None) -> Path | None:
    """The store directory (or GGUF file) for a catalog name or hub id, if that model has
    been pulled or put there."""
    path = (root or store_root()) / dir_name(name)
    if (path / "config.json").is_file():
        return path
    for candidate in (path, path.with_name(path.name + ".gguf")):
        if gguf_file(candidate) is not None:
            return candidate
    return None


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    size_bytes: int
    context: int | None
    architecture: str
    unreadable: str | None = None  # one line saying why its files cannot be read


def describe(path: Path, name: str) -> LocalModel:
    """Name, size on disk, context length and architecture, from config.json alone."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    text = config.get("text_config") or config  # multimodal configs nest the language model's
    context = text.get("max_position_embeddings")
    architecture = ", ".join(config.get("architectures") or []) or config.get("model_type") or "unknown"
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return LocalModel(name, path, size, context if isinstance(context, int) else None, architecture)


def gguf_file(path: Path) -> Path | None:
    """A GGUF model: a .gguf file, Ollama's blob of one (named for its digest), or a
    directory holding one .gguf and no config.json."""
    if path.is_file() and (path.suffix == ".gguf" or ollama_store.is_blob(path)):
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = [p for p in sorted(path.glob("*.gguf")) if p.is_file()]  # not a FIFO or device so named
        return found[0] if len(found) == 1 else None
    return None


def describe_gguf(path: Path, name: str) -> LocalModel:
    """Name, size, context length and architecture from the GGUF header alone."""
    from axchat.models import gguf_header

    gguf = gguf_file(path) or path
    facts: dict[str, object] = {}
    unreadable = None
    try:
        facts = gguf_header.read_facts(gguf)
    except ModelFileError as exc:
        unreadable = str(exc)
    except OSError as exc:
        unreadable = f"{gguf}: {exc.strerror}"
    arch = str(facts.get("general.architecture") or "unknown")
    context = facts.get(f"{arch}.context_length")
    size = gguf.stat().st_size
    return LocalModel(name, path, size, int(context) if isinstance(context, int) else None, f"{arch} (GGUF)", unreadable)


def local_models(root: Path | None = None) -> list[LocalModel]:
    """Every complete model in the store, by name: Hugging Face directories and GGUF
    files (alone or in a directory of their own)."""
    root = root or store_root()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue  # pulls in progress, converted-model cache
        if path.is_dir() and (path / "config.json").is_file():
            found.append(describe(path, display_name(path.name)))
        elif gguf_file(path) is not None:
            found.append(describe_gguf(path, display_name(path.name.removesuffix(".gguf"))))
    return found
