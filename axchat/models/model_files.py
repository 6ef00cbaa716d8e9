"""The files a model directory names for itself (its weight shards, the shard index),
accepted only as regular files inside that directory: a downloaded index could name
`../../.ssh/id_rsa`, `/dev/zero` (whose hash never ends) or a FIFO (whose open never returns)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# Real indexes map a few thousand tensor names (a few hundred KB for 70B models); far
# more is not an index, and json would hold all of it in memory.
MAX_INDEX_BYTES = 16 << 20


class ModelFileError(Exception):
    """A file of a model is not one we may read, or not readable as its format; the
    message is one line naming the file (and the entry that named it)."""


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, refused unless it is a regular file. Checked before the
    open (opening some devices does something) and again on the open file (the path may
    have changed between); non-blocking, so a FIFO put there meanwhile cannot hold the open."""
    why = _not_regular(path)
    if why is not None:
        raise ModelFileError(f"{path} {why}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ModelFileError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _not_regular(path: Path) -> str | None:
    """Why `path` (links followed) is not a regular file we can open, or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is not there"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None if stat.S_ISREG(mode) else "is not a regular file"


def inside(model_dir: Path, name: str, named_in: str) -> Path:
    """`model_dir / name`, when that is a regular file under `model_dir` once every
    symlink is followed; else ModelFileError naming where the name came from and the name."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ModelFileError(f"{named_in}: {name!r} is outside the model directory {model_dir}")
    root = model_dir.resolve()
    target = (root / relative).resolve()
    if not any(target.is_relative_to(allowed) for allowed in _allowed_roots(root)):
        raise ModelFileError(f"{named_in}: {name!r} leads out of the model directory {model_dir} (to {target})")
    why = _not_regular(target)
    if why is not None:
        raise ModelFileError(f"{named_in}: {name!r} {why}")
    return model_dir / relative


def _allowed_roots(root: Path) -> list[Path]:
    """Where a model directory's files may lead: inside it, and for a snapshot in the
    Hugging Face cache (`models--ORG--NAME/snapshots/REV`, whose files are links into
    `../../blobs`) into that one repository's blobs."""
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return [root, root.parent.parent / "blobs"]
    return [root]


def weight_shards(model_dir: Path) -> list[Path]:
    """The safetensors files of a Hugging Face model directory: the files its index names,
    else model.safetensors; [] when it has neither (a .bin or GGUF model)."""
    if not _present(model_dir / INDEX):
        return [inside(model_dir, SINGLE, str(model_dir))] if _present(model_dir / SINGLE) else []
    index = inside(model_dir, INDEX, str(model_dir))
    with open_regular(index) as f:
        raw = f.read(MAX_INDEX_BYTES + 1)
    if len(raw) > MAX_INDEX_BYTES:
        raise ModelFileError(f"{index}: more than {MAX_INDEX_BYTES >> 20} MB; not a shard index")
    try:
        weight_map = json.loads(raw)["weight_map"]
    except (ValueError, RecursionError, TypeError, KeyError) as exc:
        raise ModelFileError(f"{index}: not a shard index ({type(exc).__name__}: {exc})") from None
    if not isinstance(weight_map, dict):
        raise ModelFileError(f"{index}: weight_map is not a mapping of tensor names to files")
    named_in = f"{index} weight_map"
    odd = next((n for n in weight_map.values() if not isinstance(n, str)), None)
    if odd is not None:
        raise ModelFileError(f"{named_in}: {odd!r} is not a file name")
    return [inside(model_dir, n, named_in) for n in sorted(set(weight_map.values()))]


def _present(path: Path) -> bool:
    """There, as anything at all: a dangling link or a FIFO is present and then refused."""
    return path.exists() or path.is_symlink()


def declared_eos_ids(model_dir: Path) -> list[int]:
    """The end ids the model's generation config (else its config) declares; [] when neither does."""
    for name in ("generation_config.json", "config.json"):
        try:
            eos = json.loads((model_dir / name).read_text()).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        if eos is not None:
            return [int(i) for i in (eos if isinstance(eos, list) else [eos])]
    return []
