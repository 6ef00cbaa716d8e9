"""Check that a local model directory can be read before any library tries: a directory
or weights file we may not read otherwise surfaces as "Unrecognized model ... model_type"
or "No such file or directory", which sends the user looking in the wrong place."""

from __future__ import annotations

import os
from pathlib import Path


def unreadable_part(model: str) -> str | None:
    """One line naming the first part of a local model that this process may not read,
    or None (also for a hub id or a path that is not there: other checks say so)."""
    path = Path(model)
    if not path.is_dir():
        return None
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
