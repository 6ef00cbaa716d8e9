"""`axchat serve --check`: the settings, the model and the device, checked in seconds
before the long model load (the system unit's `ExecStartPre=`)."""

from __future__ import annotations

from pathlib import Path

from axchat import endpoint as ep
from axchat.daemon import curve_auth
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
        curve_auth.listen_security(cfg, endpoint)
    except (ep.EndpointError, curve_auth.ListenRefused) as exc:
        raise CheckFailed(str(exc)) from None

    from axchat.daemon import request_defaults
    from axchat.daemon.backend_choice import choose_backend
    from axchat.models.readable import unreadable_part
    from axchat.models.resolve import ModelNotFound, ensure_available, resolve

    try:  # before torch is imported: a misspelt name is refused in a fraction of a second
        resolved = resolve(cfg.model)
        ensure_available(resolved)
        request_defaults.check(resolved)
    except (ModelNotFound, request_defaults.BadDefaults) as exc:
        raise CheckFailed(str(exc)) from None
    # What the daemon's load refuses first: files it may not read, shards outside the
    # directory, a GGUF header out of bounds.
    unreadable = unreadable_part(resolved.source)
    if unreadable is not None:
        raise CheckFailed(unreadable)

    backend, _ = choose_backend(cfg, resolved.source)
    from axchat.daemon.draft_choice import DraftRefused, draft_source

    try:
        draft = draft_source(cfg, backend)
    except DraftRefused as exc:
        raise CheckFailed(str(exc)) from None
    if backend == "llamacpp":
        return _check_llamacpp(cfg, resolved.source, resolved.aliases[0], endpoint, draft)
    if backend != "torch":
        raise CheckFailed(f"unknown backend {cfg.backend!r}")
    from axchat.actors.backends.torch_engine import load as torch_load

    try:
        config = torch_load.load_config(resolved.source)
        model = f"{resolved.aliases[0]} ({config.model_type})"
        device = torch_load.resolve_device(cfg.device)
        dtype = str(torch_load.resolve_dtype(cfg.dtype, device)).removeprefix("torch.")
    except ModelLoadError as exc:
        raise CheckFailed(str(exc)) from None
    return f"ok: model {model}, device {device}, dtype {dtype}, socket {ep.describe(endpoint)}"


def _check_llamacpp(cfg: ServeConfig, source: str, name: str, endpoint: str, draft: str | None) -> str:
    from axchat.actors.backends import ModelLoadError, registry
    from axchat.actors.backends.llamacpp.load import find_gguf, is_llama_family, read_metadata, weight_type

    why = registry.engine("llamacpp").unavailable()
    if why is not None:
        raise CheckFailed(why)
    from axchat.actors.backends.llamacpp.gguf_convert import read_config
    from axchat.models.gguf_header import read_facts
    from axchat.models.model_files import ModelFileError

    gguf = find_gguf(source)
    if gguf is None and not is_llama_family(source):
        raise CheckFailed(f"{source} is neither a GGUF file nor a Llama-family model directory")
    try:
        if gguf is not None:
            weights, kind = gguf.name, read_facts(gguf).get("general.architecture", "unknown")
            read_metadata(gguf)  # libllama itself must know the architecture, as the load will ask
        else:
            weights, kind = f"{weight_type(cfg.quant, cfg.dtype)} GGUF", read_config(Path(source)).get("model_type")
    except (ModelLoadError, ModelFileError, OSError) as exc:
        raise CheckFailed(str(exc)) from None
    drafting = ""
    if draft is not None:
        _check_draft_vocabulary(source, cfg.draft_model or draft, draft)
        drafting = f", draft model {cfg.draft_model}"
    return f"ok: model {name} ({kind}), backend llamacpp, device cpu, weights {weights}{drafting}, socket {ep.describe(endpoint)}"


def _check_draft_vocabulary(source: str, named: str, draft: str) -> None:
    """The load's refusal of a draft model of another vocabulary, before any conversion:
    a Hugging Face directory is read as the conversion would write it."""
    from axchat.actors.backends.llamacpp import same_vocabulary
    from axchat.actors.backends.llamacpp.engine import EngineError
    from axchat.actors.backends.llamacpp.gguf_convert import ConversionError
    from axchat.actors.backends.llamacpp.load import find_gguf, is_llama_family, refused_draft

    def read(model: str) -> same_vocabulary.Vocabulary:
        gguf = find_gguf(model)
        if gguf is not None:
            return same_vocabulary.of_gguf(gguf)
        if not is_llama_family(model):
            raise CheckFailed(f"--draft-model {named} is neither a GGUF file nor a Llama-family model directory")
        return same_vocabulary.of_hf_dir(Path(model).expanduser())

    try:
        why = same_vocabulary.difference(read(source), read(draft))
    except (EngineError, ConversionError, OSError, KeyError, ValueError) as exc:
        raise CheckFailed(f"--draft-model {named}: cannot read a vocabulary: {exc}") from None
    if why is not None:
        raise CheckFailed(refused_draft(named, why))
