"""`axchat pull NAME_OR_HF_ID`: fetch a model's config, tokenizer and safetensors weights
into the local store, with a progress bar, resuming where an earlier pull broke off.

Files arrive in a hidden staging directory (`.partial/NAME`, each file as `FILE.part`
until complete) and the directory is renamed into place only when every file is whole,
so the store never shows a half-written model. Free disk is checked before the first byte.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from axchat.models import catalog, hub, store
from axchat.sizes import human_bytes

# What from_pretrained needs for a causal LM with a fast tokenizer; other weight formats
# (.bin, .pth, .gguf, onnx/, ...) would double or triple the download for nothing.
_WANTED = re.compile(
    r"(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|tokenizer\.model"
    r"|special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt|chat_template\.jinja"
    r"|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json)"
)
# Room left over after the download, so a pull never fills the disk to the last byte.
DISK_MARGIN_BYTES = 256 << 20


class PullError(Exception):
    """Why the pull stopped, in one line."""


def free_bytes(path: Path) -> int:
    """Free space where path lives (a seam for the not-enough-disk test)."""
    return shutil.disk_usage(path).free


def wanted_files(files: Iterable[hub.RemoteFile]) -> list[hub.RemoteFile]:
    return [f for f in files if _WANTED.fullmatch(f.path)]


class Progress:
    """One self-redrawing line on a terminal; on a pipe or a log, a line per finished file."""

    def __init__(self, name: str, total: int, done: int, out: TextIO) -> None:
        self.name, self.total, self.done, self.out = name, total, done, out
        self.tty = out.isatty()
        self._started = time.monotonic()
        self._fresh = 0  # bytes fetched by this run, for the rate
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        self._fresh += n
        now = time.monotonic()
        if self.tty and (now - self._drawn >= 0.1 or self.done >= self.total):
            self._drawn = now
            frac = self.done / self.total if self.total else 1.0
            bar = "#" * int(frac * 30)
            rate = self._fresh / max(now - self._started, 1e-6)
            self.out.write(
                f"\r{self.name} [{bar:<30}] {frac:4.0%} {human_bytes(self.done)}/{human_bytes(self.total)} {human_bytes(rate)}/s   "
            )
            self.out.flush()

    def file_done(self, remote: hub.RemoteFile) -> None:
        if not self.tty:
            self.out.write(f"{self.name}: {remote.path} ({human_bytes(remote.size)})\n")
            self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _partial_bytes(staging: Path, files: list[hub.RemoteFile]) -> int:
    done = 0
    for f in files:
        whole, part = staging / f.path, staging / f"{f.path}.part"
        done += f.size if whole.is_file() else (part.stat().st_size if part.is_file() else 0)
    return done


def _gguf_source(name: str, entry: catalog.CatalogModel | None) -> tuple[str, str]:
    """(repo id, file) of the catalog entry's GGUF file."""
    if entry is None or entry.gguf is None:
        offered = ", ".join(m.name for m in catalog.CATALOG.values() if m.gguf)
        raise PullError(f"no GGUF file is known for {name}; catalog models with one: {offered}")
    org, repo, file = entry.gguf.split("/", 2)
    return f"{org}/{repo}", file


def pull(
    name: str, *, root: Path | None = None, revision: str = "main", out: TextIO = sys.stderr, gguf: bool = False
) -> Path:
    """Fetch name (a catalog name or hub id) into the store; returns the model's directory.
    With `gguf`, the catalog entry's GGUF file instead (alone in that directory)."""
    if name == catalog.BUNDLED_NAME:
        raise PullError(f"{name} is bundled with axchat: nothing to pull")
    entry = catalog.CATALOG.get(name) or catalog.by_hub_id(name)
    repo_id = entry.hub_id if entry else name
    gguf_name = None
    if gguf:
        repo_id, gguf_name = _gguf_source(name, entry)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise PullError(f"{name} is neither a catalog name ({', '.join(catalog.CATALOG)}) nor a hub id like ORG/NAME")
    root = root or store.store_root()
    target = root / store.dir_name(name)
    if store.pulled_dir(name, root) is not None:
        out.write(f"{name} is already in {target}\n")
        return target

    gated = bool(entry and entry.gated and not gguf)
    staging = root / store.STAGING_DIR / target.name
    made_staging = not staging.exists()
    try:
        listed = hub.list_files(repo_id, revision, gated=gated)
        if gguf_name is not None:
            files = [f for f in listed if f.path == gguf_name]
            if not files:
                raise PullError(f"{repo_id} has no {gguf_name}")
        else:
            files = wanted_files(listed)
            if not any(f.path.endswith(".safetensors") for f in files):
                raise PullError(f"{repo_id} has no safetensors weights; axchat loads only those")
            if not any(f.path == "config.json" for f in files):
                raise PullError(f"{repo_id} has no config.json: not a transformers model")
        staging.mkdir(parents=True, exist_ok=True)
        total = sum(f.size for f in files)
        done = _partial_bytes(staging, files)
        free = free_bytes(staging)
        if total - done + DISK_MARGIN_BYTES > free:
            raise PullError(
                f"not enough disk for {name}: it needs {human_bytes(total - done)} more, {root} has {human_bytes(free)} free"
            )
        progress = Progress(name, total, done, out)
        try:
            for f in files:
                whole = staging / f.path
                if whole.is_file():
                    continue
                whole.parent.mkdir(parents=True, exist_ok=True)
                part = whole.with_name(f"{whole.name}.part")
                hub.download(repo_id, f, part, progress.advance, revision=revision, gated=gated)
                os.replace(part, whole)
                progress.file_done(f)
        finally:
            progress.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
    except hub.Interrupted as exc:
        raise PullError(str(exc)) from None  # staging kept: the next pull resumes from it
    except (hub.HubError, PullError) as exc:
        # Nothing fetched yet by any run: leave nothing behind.
        if made_staging and staging.exists() and not any(p.is_file() and p.stat().st_size for p in staging.rglob("*")):
            shutil.rmtree(staging, ignore_errors=True)
            _remove_if_empty(staging.parent)
        raise PullError(str(exc)) from None
    _remove_if_empty(staging.parent)
    return target


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="axchat pull",
        description=f"Download a model into {store.store_root()} (set XDG_DATA_HOME to move it).",
    )
    p.add_argument("model", help=f"a catalog name ({', '.join(catalog.CATALOG)}) or a hub id ORG/NAME")
    p.add_argument("--revision", default="main", help="branch, tag or commit on the hub (default main)")
    p.add_argument("--gguf", action="store_true", help="the catalog model's ready GGUF file (q8_0) instead of its safetensors")
    args = p.parse_args(argv)
    try:
        path = pull(args.model, revision=args.revision, gguf=args.gguf)
    except PullError as exc:
        print(f"axchat pull: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\naxchat pull: interrupted; run it again to resume", file=sys.stderr)
        return 130
    use = store.display_name(path.name)
    print(f"{use} is ready in {path}: axchat serve --model {use}", file=sys.stderr)
    return 0
