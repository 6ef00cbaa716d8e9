"""A model directory or weights file the daemon may not read is named in one line, not
reported as a missing `model_type` or a missing file. Run as another uid (needs root),
since root may read anything."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from axchat.models.readable import unreadable_part

OUTSIDER = 54_243


def as_outsider(model: Path) -> str | None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(OUTSIDER)
            os.setuid(OUTSIDER)
            os.write(write, (unreadable_part(str(model)) or "").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        said = answer.read()
    os.waitpid(pid, 0)
    return said or None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a check under a second uid")
def test_unreadable_directory_and_weights_are_named() -> None:
    model = Path(tempfile.mkdtemp(prefix="axc-model-"))
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"\0" * 8)
    os.chmod(model, 0o700)
    assert as_outsider(model) == f"cannot read the model directory {model}: permission denied"
    os.chmod(model, 0o755)
    os.chmod(weights, 0o600)
    assert as_outsider(model) == f"cannot read {weights}: permission denied"
    os.chmod(weights, 0o644)
    assert as_outsider(model) is None
    assert unreadable_part("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id: not ours to judge
