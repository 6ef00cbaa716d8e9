"""`axchat serve --check`: the settings, the model and the device, checked in seconds
before the long model load (the system unit's `ExecStartPre=`)."""

from __future__ import annotations

from axchat import endpoint as ep
from axchat.daemon.config import ServeConfig


class CheckFailed(Exception):
    """One line saying what is wrong."""


def check(cfg: ServeConfig) -> str:
    """A one-line summary when all is well; raises CheckFailed otherwise. Reads the
    model's config, never its weights."""
    from axchat.actors.backends import ModelLoadError

    endpoint = ep.to_zmq(cfg.socket)
    path = ep.ipc_path(endpoint)
    try:
        group = ep.resolve_group(cfg.socket_group)
        if path is not None:
            ep.prepare_private_dir(path.parent, group)
    except ep.EndpointError as exc:
        raise CheckFailed(str(exc)) from None

    if cfg.backend != "torch":
        raise CheckFailed(f"unknown backend {cfg.backend!r}")
    from axchat.models.resolve import ModelNotFound, ensure_available, resolve

    try:  # before torch is imported: a misspelt name is refused in a fraction of a second
        resolved = resolve(cfg.model)
        ensure_available(resolved)
    except ModelNotFound as exc:
        raise CheckFailed(str(exc)) from None
    from axchat.actors.backends import torch_backend

    try:
        config = torch_backend.load_config(resolved.source)
        model = f"{resolved.aliases[0]} ({config.model_type})"
        device = torch_backend.resolve_device(cfg.device)
        dtype = str(torch_backend.resolve_dtype(cfg.dtype, device)).removeprefix("torch.")
    except ModelLoadError as exc:
        raise CheckFailed(str(exc)) from None
    return f"ok: model {model}, device {device}, dtype {dtype}, socket {ep.describe(endpoint)}"
