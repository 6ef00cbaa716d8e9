"""Check that a local model can be read before any library tries: a directory or weights
file we may not read otherwise surfaces as "Unrecognized model ... model_type" or "No such
file or directory", which sends the user looking in the wrong place; and a shard index
naming files outside the directory, or a crafted GGUF header, would be read by libraries
that follow it out, hang on it or raise pages about it."""

from __future__ import annotations

import os
from pathlib import Path

from axchat.models import gguf_header, model_files, store


def unreadable_part(model: str) -> str | None:
    """One line naming the first part of a local model that this process may not (or
    must not) read, or None (also for a hub id or a path that is not there: other checks
    say so)."""
    path = Path(model).expanduser()
    if path.is_dir():
        denied = _denied(path)
        if denied is not None:
            return denied
    try:
        if path.is_dir():
            model_files.weight_shards(path)
        gguf = store.gguf_file(path)
        if gguf is not None:
            gguf_header.read_facts(gguf)
    except model_files.ModelFileError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read {exc.filename or path}: {exc.strerror}"
    return None


def _denied(path: Path) -> str | None:
    if not os.access(path, os.R_OK | os.X_OK):
        return f"cannot read the model directory {path}: permission denied"
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        return f"cannot read the model directory {path}: {exc.strerror}"
    for entry in entries:
        if entry.is_file() and not os.access(entry, os.R_OK):
            return f"cannot read {entry}: permission denied"
    return None
