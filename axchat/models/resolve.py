"""What `--model` names: a bundled model, a catalog name, a local path, a hub id or an
Ollama model (`ollama:NAME[:TAG]`), turned
into what `from_pretrained` loads plus the names clients may use for it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from axchat.models import catalog, ollama_store, store
from axchat.models.aipu_catalog import CATALOG as METIS_CATALOG

# A hub id is ORG/NAME; anything else that is not a catalog name, a path or in the store
# is a typo, refused at once instead of after the hub's retries.
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# How long `ensure_available` waits for the hub to say whether a model exists.
HUB_PROBE_TIMEOUT_S = 2.0


class ModelNotFound(Exception):
    """--model names nothing that can be loaded from here; the message is one line
    saying what was looked for and how to get it."""


@dataclass(frozen=True)
class ResolvedModel:
    source: str  # a directory or a hub id, for from_pretrained
    aliases: tuple[str, ...]  # the user's spelling and the catalog name: generate requests may use either
    note: str | None = None  # one line worth logging about the choice
    from_hub: bool = False  # not in the store: from_pretrained would fetch it
    # An Ollama model's params and system layers, as data: not yet the daemon's defaults.
    ollama: ollama_store.OllamaModel | None = None


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def resolve(model: str | None, root: Path | None = None) -> ResolvedModel:
    """Bundled name -> package directory; an existing or path-shaped name -> that path;
    a catalog name or hub id -> its store directory once pulled, else the hub id.
    Raises ModelNotFound for a name that is none of these."""
    if model is None or model == catalog.BUNDLED_NAME:
        note = None
        if model is None:
            note = (
                f"no --model given: serving {catalog.BUNDLED_NAME}, the bundled demonstration model "
                f"(it knows jokes and quotes, nothing else); for a real model: {catalog.REAL_MODEL_HINT}"
            )
        return ResolvedModel(str(catalog.BUNDLED_DIR), (catalog.BUNDLED_NAME,), note)
    if model.startswith(ollama_store.PREFIX):
        try:
            found = ollama_store.resolve(model.removeprefix(ollama_store.PREFIX))
        except ollama_store.OllamaStoreError as exc:
            raise ModelNotFound(str(exc)) from None
        return ResolvedModel(str(found.blob), tuple(dict.fromkeys([model, found.name])), ollama=found)
    if _looks_like_path(model):
        return ResolvedModel(model, (model,))
    if model in METIS_CATALOG:
        # A model compiled for the Metis card: the aipu backend finds it in the SDK's build tree.
        return ResolvedModel(model, (model,))
    entry = catalog.CATALOG.get(model) or catalog.by_hub_id(model)
    aliases = tuple(dict.fromkeys([model, *([entry.name, entry.hub_id] if entry else [])]))
    pulled = store.pulled_dir(model, root)
    if pulled is not None:
        return ResolvedModel(str(pulled), aliases)
    if entry is not None:
        return ResolvedModel(
            entry.hub_id,
            aliases,
            f"{model} is not in the local store: loading {entry.hub_id} from the hub (`axchat pull {entry.name}` to keep it)",
            from_hub=True,
        )
    if not _HUB_ID.fullmatch(model):
        raise ModelNotFound(
            f"unknown model {model!r}: not a catalog name, a directory or a hub id (ORG/NAME); "
            "`axchat models` lists the models here and those `axchat pull` can fetch"
        )
    return ResolvedModel(model, aliases, from_hub=True)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def ensure_available(resolved: ResolvedModel, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Fail in one line, within about `timeout_s`, for a model that is not here and
    cannot come from the hub (offline, unreachable, or no such model there), rather
    than after from_pretrained's retries and a misleading "couldn't connect"."""
    if not resolved.from_hub:
        return
    name = resolved.aliases[0]
    how = f"`axchat pull {name}` fetches it where there is a network; `axchat models` lists what is here"
    if _offline():
        raise ModelNotFound(f"model {name} is not here, and HF_HUB_OFFLINE is set: {how}")
    from axchat.models import hub  # http.client and urllib: only for a model not here

    try:
        hub.probe(resolved.source, timeout_s)
    except hub.HubError as exc:
        raise ModelNotFound(f"model {name} is not here, and the hub cannot provide it ({exc}); {how}") from None
