"""Which backend `--backend auto` means for this model on this machine: llama.cpp for
GGUF files and Llama-family models on the CPU, torch for CUDA and other architectures,
the AIPU when asked for by device."""

from __future__ import annotations

import logging
from pathlib import Path

from axchat.daemon.config import ServeConfig

log = logging.getLogger(__name__)


def cuda_present() -> bool:
    """A GPU torch can use. Asking torch costs its import; without the driver's device node
    there is no GPU, and without torch (an extra) none that axchat can use: the model then
    runs on llama.cpp, on the CPU."""
    if not Path("/dev/nvidiactl").exists():
        return False
    from axchat.actors.backends.torch_engine import missing_extra

    why = missing_extra("a CUDA device")
    if why is not None:
        log.warning("%s; serving on the CPU", why)
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_backend(cfg: ServeConfig, model: str) -> tuple[str, str | None]:
    """(backend, a line worth logging about the choice, or None)."""
    if cfg.backend != "auto":
        return cfg.backend, None
    if cfg.device == "aipu":
        return "aipu", None
    if cfg.device.startswith("cuda") or (cfg.device == "auto" and cuda_present()):
        return "torch", None
    from axchat.actors.backends.llamacpp.load import find_gguf, is_llama_family

    if find_gguf(model) is None and not is_llama_family(model):
        return "torch", None
    # llama.cpp even when it cannot be imported: the load then fails saying why and how
    # to build it. Running on torch instead would hide a broken install behind a
    # daemon several times slower that nobody asked for.
    return "llamacpp", None
