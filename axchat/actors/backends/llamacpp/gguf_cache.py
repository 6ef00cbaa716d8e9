"""Converted GGUF files, kept in the model store (`<store>/.gguf/`, hidden from listings)
and keyed by the source files' contents and the weight type, so a model is converted
once and every later start reuses the file. Never written beside the user's files.

Hashing a few GB of weights takes seconds, so each file's hash is remembered against
its path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from axchat.actors.backends.llamacpp import gguf_convert
from axchat.models import model_files, store

log = logging.getLogger(__name__)

CACHE_DIR = ".gguf"
_HASHES = "hashes.json"
# What the conversion reads; anything else in the directory does not change the file.
_SOURCES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "model.safetensors.index.json")


def cache_root() -> Path:
    return store.store_root() / CACHE_DIR


def _file_hash(path: Path, memo: dict[str, list[object]]) -> str:
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    key = str(path.resolve())
    known = memo.get(key)
    if known is not None and known[:2] == stamp:
        return str(known[2])
    digest = hashlib.sha256()
    with model_files.open_regular(path) as f:  # a device or FIFO would never end the hash
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    memo[key] = [*stamp, digest.hexdigest()]
    return digest.hexdigest()


def cache_key(model_dir: Path, weight_type: str, root: Path | None = None) -> str:
    """Hash of the converter version, the weight type and every source file's contents."""
    root = root or cache_root()
    memo_path = root / _HASHES
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    from axchat.actors.backends.llamacpp import safetensors_read

    files = [model_dir / n for n in _SOURCES if (model_dir / n).is_file()] + safetensors_read.weight_files(model_dir)
    digest = hashlib.sha256(f"v{gguf_convert.CONVERTER_VERSION}:{weight_type}".encode())
    for path in files:
        digest.update(f"{path.name}:{_file_hash(path, memo)}".encode())
    memo = {p: v for p, v in memo.items() if os.path.exists(p)}  # models built and deleted (tests)
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(memo_path, json.dumps(memo).encode())
    return digest.hexdigest()[:24]


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cached_path(model_dir: Path, weight_type: str, root: Path | None = None) -> Path:
    root = root or cache_root()
    return root / f"{model_dir.resolve().name}-{weight_type}-{cache_key(model_dir, weight_type, root)}.gguf"


def ensure(
    model_dir: Path,
    weight_type: str,
    make: Callable[[Path, Path], None],
    root: Path | None = None,
) -> tuple[Path, bool]:
    """The cached GGUF of `model_dir` at `weight_type`, made with `make(model_dir, tmp)`
    when missing, then renamed into place (a half-written file is never found). Returns
    (path, whether it was made now)."""
    target = cached_path(model_dir, weight_type, root)
    if target.is_file():
        return target, False
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        make(model_dir, Path(tmp))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target, True
