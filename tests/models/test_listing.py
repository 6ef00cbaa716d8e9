"""`axchat models`: local models with their size, context and architecture, the catalog
marking what is pulled, and the Metis catalog, all without importing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from axchat.models import catalog
from axchat.models.aipu_catalog import CATALOG as AIPU_CATALOG
from axchat.models.catalog import BUNDLED_DIR


def test_models_lists_local_catalog_and_aipu(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "axchat" / "models"
    shutil.copytree(tiny_model_dir, root / "smollm2-135m")  # as if pulled by its catalog name
    shutil.copytree(tiny_model_dir, root / "someorg--chatty")  # as if pulled by hub id
    (root / ".partial" / "half-done").mkdir(parents=True)  # an unfinished pull is no model
    size_mb = sum(p.stat().st_size for p in tiny_model_dir.iterdir()) / 1e6
    tiny_context = str(json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"])
    mini_context = str(json.loads((BUNDLED_DIR / "config.json").read_text())["max_position_embeddings"])

    code = "import sys; from axchat.models import listing; listing.main([]); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[-1] == "[]"  # no torch, no transformers

    def row(name: str) -> list[str]:
        return next(line.split() for line in out if line.split()[:1] == [name])

    assert row("someorg/chatty")[1:5] == [f"{size_mb:.1f}", "MB", tiny_context, "LlamaForCausalLM"]
    assert row("axchat-mini")[3:5] == [mini_context, "LlamaForCausalLM"]
    assert "half-done" not in proc.stdout
    pulled_rows = [line for line in out if line.strip().startswith(tuple(catalog.CATALOG))]
    assert [line.split()[0] for line in pulled_rows if line.rstrip().endswith("pulled")] == ["smollm2-135m"]
    assert " ".join(row("llama-3.2-1b")).endswith("gated: needs HF_TOKEN")
    for name in AIPU_CATALOG:
        assert row(name)[1] == str(AIPU_CATALOG[name].context)
