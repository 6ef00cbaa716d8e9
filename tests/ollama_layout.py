"""A real Ollama store layout, as `ollama pull` leaves it: a manifest naming a config blob
and the model, params and system layers, each a blob under its true sha256 digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from axchat.models import ollama_store

PARAMS = {"stop": ["<|im_end|>"], "temperature": 0.6, "top_p": 0.9}
SYSTEM = "You are a terse assistant."


def _blob(root: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_model(
    root: Path,
    gguf: bytes,
    name: tuple[str, str, str, str],
    extra: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
    *,
    params: dict[str, object] = PARAMS,  # type: ignore[assignment]
    system: str = SYSTEM,
) -> Path:
    """A manifest as `ollama pull` leaves it, its config and layers as blobs."""
    layers = [{"mediaType": ollama_store.MODEL, **_blob(root, gguf)}]
    layers += [{"mediaType": ollama_store.PARAMS, **_blob(root, json.dumps(params).encode())}]
    layers += [{"mediaType": ollama_store.SYSTEM, **_blob(root, system.encode())}]
    layers += [{"mediaType": kind, **_blob(root, data)} for kind, data in extra]
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", **_blob(root, b'{"model_format":"gguf"}')}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "config": config, "layers": layers}
    path = root / "manifests" / Path(*name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path
