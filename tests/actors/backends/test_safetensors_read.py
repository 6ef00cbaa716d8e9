"""The converter's safetensors reader checks a header against its file before using it:
a crafted header is one line (SafetensorsError), and the load's ModelLoadError, never a
RecursionError, a read of what the header claims or a memory map past the end."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from axchat.actors.backends.base import ModelLoadError
from axchat.actors.backends.llamacpp import load, safetensors_read


def _file(path: Path, header: bytes, data: bytes = b"\0" * 16, claimed: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if claimed is None else claimed) + header + data)
    return path


def _tensor(**entry: object) -> bytes:
    return json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], **entry}}).encode()


# name -> (header, length the file claims for it or None, what the line says)
CRAFTED = {
    "header-past-the-end": (_tensor(), 1 << 40, "a header of 1099511627776 bytes in a file of"),
    "deep-nesting": (b"[" * 100_000 + b"]" * 100_000, None, "the header is not JSON as safetensors writes it (RecursionError)"),
    "not-a-mapping": (b"[1, 2]", None, "the header is not a mapping of tensor names"),
    "data-past-the-end": (_tensor(data_offsets=[0, 1 << 50]), None, "tensor 'w' lies at bytes 0..1125899906842624, outside"),
    "negative-size": (_tensor(shape=[-4]), None, "tensor 'w' lacks a dtype, a shape of sizes or two data offsets"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_header_is_one_line(case: str, tmp_path: Path) -> None:
    header, claimed, why = CRAFTED[case]
    path = _file(tmp_path / "model.safetensors", header, claimed=claimed)
    with pytest.raises(safetensors_read.SafetensorsError) as caught:
        safetensors_read.read_tensor(path, "w")
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and why in message and "\n" not in message


def test_a_shape_whose_size_overflows_int64_is_refused(tmp_path: Path) -> None:
    """2**32 * 2**32 elements wrap to 0 in numpy's int64; counted exactly, they disagree
    with the 16 bytes the entry holds."""
    path = _file(tmp_path / "model.safetensors", _tensor(shape=[1 << 32, 1 << 32]))
    with pytest.raises(safetensors_read.SafetensorsError, match="size disagrees with its shape"):
        safetensors_read.read_tensor(path, "w")


def test_the_load_turns_it_into_one_load_error_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "crafted"
    shutil.copytree(tiny_model_dir, model)
    header, claimed, why = CRAFTED["deep-nesting"]
    _file(model / "model.safetensors", header, claimed=claimed)
    with pytest.raises(ModelLoadError) as caught:
        load.gguf_for(model, "f32", threads=1)
    message = str(caught.value)
    assert message.startswith(f"cannot convert {model} to GGUF: ") and why in message and "\n" not in message
