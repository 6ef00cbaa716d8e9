"""What `--model` names: a bundled model, a catalog name, a local path or a hub id, turned
into what `from_pretrained` loads plus the names clients may use for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from axchat.models import catalog, store


@dataclass(frozen=True)
class ResolvedModel:
    source: str  # a directory or a hub id, for from_pretrained
    aliases: tuple[str, ...]  # the user's spelling and the catalog name: generate requests may use either
    note: str | None = None  # one line worth logging about the choice


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def resolve(model: str | None, root: Path | None = None) -> ResolvedModel:
    """Bundled name -> package directory; an existing or path-shaped name -> that path;
    a catalog name or hub id -> its store directory once pulled, else the hub id."""
    if model is None or model == catalog.BUNDLED_NAME:
        note = None
        if model is None:
            note = (
                f"no --model given: serving {catalog.BUNDLED_NAME}, the bundled demonstration model "
                f"(it knows jokes and quotes, nothing else); for a real model: {catalog.REAL_MODEL_HINT}"
            )
        return ResolvedModel(str(catalog.BUNDLED_DIR), (catalog.BUNDLED_NAME,), note)
    if _looks_like_path(model):
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
        )
    return ResolvedModel(model, aliases)
