"""What Ollama's model routes answer about the one model the daemon serves: `/api/tags`
(the list), `/api/show` (its details) and `/api/ps` (whether it is loaded), built from the
daemon's own `welcome` and `status_reply`; the bridge reads no model file itself."""

from __future__ import annotations

import time
from typing import Any

from axchat.frontends.web.ollama_mapping import digest, iso_time, listed_name
from axchat.protocol import v1

# Ollama gives a manifest's modification time; the bridge has none, so its own start.
_STARTED = time.time()
# A model kept loaded for good (keep-alive off) expires, in Ollama's words, never.
_NEVER = "9999-12-31T23:59:59Z"


def _details(welcome: v1.Welcome | v1.StatusReply) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf" if welcome.backend == "llamacpp" else welcome.backend,
        "family": "",
        "families": None,
        "parameter_size": "",
        # The llamacpp backend's dtype is its weight type, as Ollama names quantizations.
        "quantization_level": welcome.dtype.upper() if welcome.backend == "llamacpp" else welcome.dtype,
    }


def _entry(model: v1.StatusReply) -> dict[str, Any]:
    name = listed_name(model.model)
    return {
        "name": name,
        "model": name,
        "modified_at": iso_time(_STARTED),
        "size": model.weights_bytes,  # 0 from a backend that plans no memory, or unloaded
        "digest": digest(model.model),
        "details": _details(model),
    }


def tags(status: v1.StatusReply) -> dict[str, Any]:
    return {"models": [_entry(status)]}


def show(welcome: v1.Welcome) -> dict[str, Any]:
    return {
        "license": "",
        "modelfile": f"# served by axchat\nFROM {welcome.model}\n",
        "parameters": "",
        "template": "",
        "details": _details(welcome),
        "model_info": {"general.context_length": welcome.context_length},
        # Clients check for "tools" before they offer a model tools: every model can
        # call them here, the grammar keeping its calls well formed.
        "capabilities": ["completion", "tools"],
        "modified_at": iso_time(_STARTED),
    }


def ps(status: v1.StatusReply) -> dict[str, Any]:
    if not status.loaded:
        return {"models": []}
    entry = _entry(status)
    entry["expires_at"] = _NEVER if status.unloads_at is None else iso_time(status.unloads_at)
    entry["size"] = status.weights_bytes + status.running_kv_bytes + status.prefix_kv_bytes
    entry["size_vram"] = 0
    entry["context_length"] = status.context_length
    return {"models": [entry]}
