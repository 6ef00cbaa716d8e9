"""A shard index (`model.safetensors.index.json`) may name only regular files inside the
model directory: a parent path, an absolute path, a device, a FIFO or a link out of the
directory is refused in one line naming the entry, by the converter, `serve --check` and
the daemon, before anything opens it (hashing /dev/zero never ends; opening a FIFO waits
for a writer)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import short_socket_dir

from axchat.actors.backends.llamacpp import safetensors_read
from axchat.models import model_files

RUN_TIMEOUT_S = 120  # a daemon that hashes /dev/zero runs until this ends it


def _outside(model: Path) -> Path:
    outside = model.parent / "outside.safetensors"
    shutil.copy(model / "model.safetensors", outside)  # readable and well formed: only where it lies is wrong
    return outside


def _parent(model: Path) -> str:
    return f"../{_outside(model).name}"


def _absolute(model: Path) -> str:
    return str(_outside(model))


def _device(model: Path) -> str:
    return "/dev/zero"


def _symlink_out(model: Path) -> str:
    (model / "link.safetensors").symlink_to(_outside(model))
    return "link.safetensors"


def _fifo(model: Path) -> str:
    os.mkfifo(model / "pipe.safetensors")
    return "pipe.safetensors"


# name -> (makes the bad entry, what the line says about it)
BAD_ENTRIES = {
    "parent": (_parent, "is outside the model directory"),
    "absolute": (_absolute, "is outside the model directory"),
    "device": (_device, "is outside the model directory"),
    "symlink-out": (_symlink_out, "leads out of the model directory"),
    "fifo": (_fifo, "is not a regular file"),
}


@pytest.fixture(params=list(BAD_ENTRIES))
def bad_model(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the tiny model whose index sends one tensor to the bad entry; and the
    line expected, which names the index and the entry."""
    model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    make, why = BAD_ENTRIES[request.param]
    entry = make(model)
    weight_map = {"model.embed_tokens.weight": entry, "model.norm.weight": "model.safetensors"}
    (model / model_files.INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return model, f"{model / model_files.INDEX} weight_map: {entry!r} {why}"


def test_the_converter_refuses_the_entry(bad_model: tuple[Path, str]) -> None:
    model, line = bad_model
    with pytest.raises(model_files.ModelFileError) as caught:
        safetensors_read.weight_files(model)
    assert str(caught.value).startswith(line) and "\n" not in str(caught.value)


def test_serve_check_refuses_it_in_one_line(bad_model: tuple[Path, str]) -> None:
    model, line = bad_model
    done = subprocess.run(
        [sys.executable, "-m", "axchat", "serve", "--check", "--model", str(model), "--socket", str(short_socket_dir() / "d.sock")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(f"axchat serve: error: {line}"), done.stderr


@pytest.mark.parametrize("bad_model", ["device", "fifo"], indirect=True)
def test_the_daemon_refuses_it_at_once_instead_of_reading_it(bad_model: tuple[Path, str]) -> None:
    model, line = bad_model
    done = subprocess.run(
        [sys.executable, "-m", "axchat", "serve", "--model", str(model), "--socket", str(short_socket_dir() / "d.sock")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"axchat serve: error: {line}"), done.stderr


def test_shards_inside_the_directory_are_read(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A real sharded layout, one shard in a subdirectory and one through a link that
    stays inside: both are the model's own files."""
    model = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, model)
    (model / "shards").mkdir()
    os.rename(model / "model.safetensors", model / "shards" / "model-00001-of-00001.safetensors")
    (model / "model.safetensors").symlink_to(Path("shards") / "model-00001-of-00001.safetensors")
    weight_map = {"model.embed_tokens.weight": "shards/model-00001-of-00001.safetensors", "model.norm.weight": "model.safetensors"}
    (model / model_files.INDEX).write_text(json.dumps({"weight_map": weight_map}))
    assert safetensors_read.weight_files(model) == [model / "model.safetensors", model / "shards" / "model-00001-of-00001.safetensors"]
    assert "model.embed_tokens.weight" in safetensors_read.tensor_names(model)


def test_a_hugging_face_cache_snapshot_reads_its_own_blobs_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The hub's cache keeps each file once under `blobs/` and links to it from
    `snapshots/REV/`: those links lead into that repository's blobs, and are read; a
    link into another repository's blobs is still refused."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for item in tiny_model_dir.iterdir():
        blob = repo / "blobs" / f"blob-{item.name}"
        shutil.copy(item, blob)
        (snapshot / item.name).symlink_to(Path("..", "..", "blobs", blob.name))
    assert safetensors_read.weight_files(snapshot) == [snapshot / "model.safetensors"]

    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    shutil.copy(tiny_model_dir / "model.safetensors", other / "weights")
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "..", "models--org--other", "blobs", "weights"))
    with pytest.raises(model_files.ModelFileError, match="leads out of the model directory"):
        safetensors_read.weight_files(snapshot)
