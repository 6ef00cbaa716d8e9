"""Safetensors weights as float32 numpy arrays, one tensor at a time, without torch:
the format is a JSON header then raw little-endian data, and bfloat16 is the top half
of a float32, so a shift reads it (numpy has no bfloat16)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


class SafetensorsError(Exception):
    """A weights file is not safetensors as we read it; one line for the user."""


def _header(path: Path) -> tuple[dict[str, dict[str, object]], int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path.name}: too short for a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 << 20:
            raise SafetensorsError(f"{path.name}: header of {size} bytes; not a safetensors file")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise SafetensorsError(f"no model.safetensors in {model_dir}")
    return [single]


def tensor_names(model_dir: Path) -> dict[str, tuple[Path, list[int]]]:
    """Every tensor's file and shape."""
    found: dict[str, tuple[Path, list[int]]] = {}
    for path in weight_files(model_dir):
        header, _ = _header(path)
        for name, meta in header.items():
            shape = meta["shape"]
            assert isinstance(shape, list)
            found[name] = (path, [int(d) for d in shape])
    return found


def read_tensor(path: Path, name: str) -> np.ndarray:
    """One tensor as float32 (copied out of a memory map of the file)."""
    header, base = _header(path)
    meta = header[name]
    dtype, shape, (start, end) = meta["dtype"], meta["shape"], meta["data_offsets"]  # type: ignore[misc]
    count = int(np.prod(shape)) if shape else 1
    if dtype == "BF16":
        raw = np.memmap(path, dtype="<u2", mode="r", offset=base + int(start), shape=(count,))
        out = (raw.astype(np.uint32) << 16).view(np.float32)
    elif dtype in _NUMPY:
        raw = np.memmap(path, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<"), mode="r", offset=base + int(start), shape=(count,))
        out = raw.astype(np.float32)
    else:
        raise SafetensorsError(f"{path.name}: tensor {name} has dtype {dtype}, which this converter does not read")
    if out.nbytes // out.itemsize * np.dtype(raw.dtype).itemsize != int(end) - int(start):
        raise SafetensorsError(f"{path.name}: tensor {name}'s size disagrees with its shape")
    return out.reshape(shape)
