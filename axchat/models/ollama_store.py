"""Models in Ollama's store, served in place: `ollama:NAME[:TAG]` read through its manifest
to the GGUF blob, which is opened read-only where Ollama keeps it (no copy)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from axchat.models.model_files import ModelFileError, open_regular

PREFIX = "ollama:"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL = "application/vnd.ollama.image.model"
PARAMS = "application/vnd.ollama.image.params"
SYSTEM = "application/vnd.ollama.image.system"
# Layers that change what the weights compute; serving the model without them would
# answer as a different model, so they are refused rather than skipped.
UNSUPPORTED = {
    "application/vnd.ollama.image.adapter": "a LoRA adapter",
    "application/vnd.ollama.image.projector": "a vision projector",
}
# Blobs are content-addressed: hashing costs a read of the whole file (seconds for a
# multi-GB model), so serving hashes blobs up to this size and only compares the size of
# larger ones; `axchat models` compares sizes only, to stay instant. Ollama itself
# verifies every blob's digest when it pulls it.
HASH_LIMIT_BYTES = 256 << 20
# Manifests and params are a few KB; far more is not one.
_MAX_JSON_BYTES = 1 << 20
_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class OllamaStoreError(ModelFileError):
    """An Ollama model that cannot be served; the message is one line saying why."""


@dataclass(frozen=True)
class OllamaModel:
    name: str  # ollama:NAME:TAG, as `axchat models` shows it
    blob: Path  # the GGUF file, in Ollama's store
    size_bytes: int
    params: dict[str, object] = field(default_factory=dict)  # stop strings, sampling defaults
    system: str | None = None  # the default system prompt


def roots() -> list[Path]:
    """Where Ollama's store may be, in the order Ollama itself looks: $OLLAMA_MODELS, the
    user's own, then the system service's."""
    env = os.environ.get("OLLAMA_MODELS")
    if env:
        return [Path(env).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def manifest_parts(name: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) for NAME, NS/NAME or HOST/NS/NAME, with an optional
    :TAG, as Ollama writes them (`hf.co/ORG/REPO:Q4_K_M`)."""
    path, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    parts = path.split("/")
    if not path or any(not p or p in (".", "..") for p in parts) or len(parts) > 3 or "/" in tag or tag in (".", ".."):
        raise OllamaStoreError(f"{PREFIX}{name} is not an Ollama model name ([HOST/][NAMESPACE/]NAME[:TAG])")
    if len(parts) == 1:
        parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_HOST, *parts]
    return parts[0], parts[1], parts[2], tag or DEFAULT_TAG


def display_name(host: str, namespace: str, model: str, tag: str) -> str:
    if host == DEFAULT_HOST:
        return f"{PREFIX}{model}:{tag}" if namespace == DEFAULT_NAMESPACE else f"{PREFIX}{namespace}/{model}:{tag}"
    return f"{PREFIX}{host}/{namespace}/{model}:{tag}"


def is_blob(path: Path) -> bool:
    """A GGUF blob of Ollama's store: named for its digest, starting with GGUF's magic."""
    if not _BLOB_NAME.fullmatch(path.name) or path.parent.name != "blobs":
        return False
    try:
        with open_regular(path) as f:
            return f.read(4) == b"GGUF"
    except (ModelFileError, OSError):
        return False


def _unreadable(root: Path) -> str:
    """How to let this process's user (the axchat service runs as its own) read the store."""
    me = _user_name()
    return (
        f"cannot read Ollama's store {root}: permission denied for user {me} (Ollama's service keeps it as user "
        f"ollama): `sudo setfacl -R -m u:{me}:rX {root}` (again with -d for models pulled later), or "
        f"`sudo usermod -aG ollama {me}` and restart axchat"
    )


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no passwd entry (a container's)
        return str(os.geteuid())


def _read_json(path: Path, what: str) -> dict[str, object]:
    try:
        with open_regular(path) as f:
            raw = f.read(_MAX_JSON_BYTES + 1)
    except PermissionError:
        raise OllamaStoreError(_unreadable(path.parent)) from None
    except OSError as exc:
        raise OllamaStoreError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > _MAX_JSON_BYTES:
        raise OllamaStoreError(f"{what} {path} is over {_MAX_JSON_BYTES} bytes: not one Ollama writes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise OllamaStoreError(f"{what} {path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OllamaStoreError(f"{what} {path} is not a JSON object")
    return data


def _blob(root: Path, layer: dict[str, object], name: str) -> tuple[Path, str]:
    digest = str(layer.get("digest", ""))
    found = _DIGEST.fullmatch(digest)
    if found is None:
        raise OllamaStoreError(f"{name}: a layer's digest {digest!r} is not sha256:<64 hex digits>")
    path = root / "blobs" / f"sha256-{found.group(1)}"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise OllamaStoreError(f"{name}: blob {path} is missing (`ollama pull` fetches it again)") from None
    except PermissionError:
        raise OllamaStoreError(_unreadable(root)) from None
    if not stat.S_ISREG(mode):
        raise OllamaStoreError(f"{name}: blob {path} is not a regular file")
    return path, found.group(1)


def _verify(path: Path, hex_digest: str, declared: object, hash_limit: int, name: str) -> int:
    """The blob's size, once it matches the manifest's, and its digest where hashing is cheap."""
    size = path.stat().st_size
    if isinstance(declared, int) and declared != size:
        raise OllamaStoreError(f"{name}: blob {path} holds {size} bytes, the manifest says {declared}")
    if size <= hash_limit:
        h = hashlib.sha256()
        with open_regular(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != hex_digest:
            raise OllamaStoreError(f"{name}: blob {path} does not match its digest sha256:{hex_digest}")
    return size


def _manifest(name: str) -> tuple[Path, dict[str, object], str]:
    host, namespace, model, tag = manifest_parts(name)
    shown = display_name(host, namespace, model, tag)
    tried = []
    for root in roots():
        path = root / "manifests" / host / namespace / model / tag
        tried.append(str(path))
        if path.exists():
            return root, _read_json(path, "manifest"), shown
        if root.exists() and not os.access(root, os.R_OK | os.X_OK):
            raise OllamaStoreError(_unreadable(root))
    raise OllamaStoreError(f"no Ollama model {shown}: no manifest at {' or '.join(tried)} (`ollama pull {name}` fetches it)")


def _open(root: Path, manifest: dict[str, object], shown: str, hash_limit: int) -> OllamaModel:
    layers = [layer for layer in manifest.get("layers") or [] if isinstance(layer, dict)]  # type: ignore[attr-defined]
    kinds = {str(layer.get("mediaType")) for layer in layers}
    for kind, what in UNSUPPORTED.items():
        if kind in kinds:
            raise OllamaStoreError(f"{shown} has {what} layer ({kind}), which axchat does not support")
    models = [layer for layer in layers if layer.get("mediaType") == MODEL]
    if not models:
        raise OllamaStoreError(
            f"{shown} has no model layer: a cloud model (remote_host) or not a model; axchat serves local GGUF weights only"
        )
    blob, hex_digest = _blob(root, models[0], shown)
    size = _verify(blob, hex_digest, models[0].get("size"), hash_limit, shown)
    params: dict[str, object] = {}
    system = None
    for layer in layers:
        if layer.get("mediaType") == PARAMS:
            params = _read_json(_blob(root, layer, shown)[0], "params layer")
        elif layer.get("mediaType") == SYSTEM:
            with open_regular(_blob(root, layer, shown)[0]) as f:
                system = f.read(_MAX_JSON_BYTES).decode("utf-8", errors="replace")
    return OllamaModel(shown, blob, size, params, system)


def resolve(name: str, hash_limit: int = HASH_LIMIT_BYTES) -> OllamaModel:
    """The model `ollama:NAME[:TAG]` names (NAME without the prefix), or OllamaStoreError."""
    root, manifest, shown = _manifest(name)
    return _open(root, manifest, shown, hash_limit)


def local_models() -> list[OllamaModel | tuple[str, str]]:
    """Every model in the first store found: an OllamaModel, or (name, why it cannot be
    served). Sizes are compared, digests not hashed: listing stays instant."""
    for root in roots():
        manifests = root / "manifests"
        if not manifests.is_dir():
            continue
        found: list[OllamaModel | tuple[str, str]] = []
        for path in sorted(p for p in manifests.glob("*/*/*/*") if p.is_file()):
            host, namespace, model, tag = path.relative_to(manifests).parts
            shown = display_name(host, namespace, model, tag)
            try:
                found.append(_open(root, _read_json(path, "manifest"), shown, hash_limit=0))
            except (ModelFileError, OSError) as exc:
                found.append((shown, str(exc)))
        return found
    return []
