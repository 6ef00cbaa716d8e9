"""`--draft-model` as the load needs it: a local model (a GGUF file, a Hugging Face
directory, a pulled catalog name) for the llama.cpp backend, checked the same way by
`serve` and `serve --check`."""

from __future__ import annotations

from pathlib import Path

from axchat.daemon.config import ServeConfig
from axchat.daemon.startup_error import StartupError


class DraftRefused(StartupError):
    """The draft model cannot be used as given; one line."""


def draft_source(cfg: ServeConfig, backend: str) -> str | None:
    """The draft model's local path, None when the daemon uses none."""
    if cfg.speculate != "draft" or cfg.draft_model is None:
        return None
    if backend != "llamacpp":
        raise DraftRefused(f"--draft-model runs on the llamacpp backend only, not {backend}")
    from axchat.models.resolve import ModelNotFound, resolve

    try:
        source = resolve(cfg.draft_model).source
    except ModelNotFound as exc:
        raise DraftRefused(f"--draft-model: {exc}") from None
    if not Path(source).expanduser().exists():
        raise DraftRefused(
            f"--draft-model {cfg.draft_model}: no such file or directory (a GGUF file, a Hugging Face "
            "directory, or a catalog name pulled with `axchat pull`)"
        )
    return source
