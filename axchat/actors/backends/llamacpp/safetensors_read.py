"""Safetensors weights as float32 numpy arrays, one tensor at a time, without torch:
the format is a JSON header then raw little-endian data, and bfloat16 is the top half
of a float32, so a shift reads it (numpy has no bfloat16)."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from axchat.models import model_files
from axchat.models.model_files import ModelFileError, open_regular

_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


class SafetensorsError(ModelFileError):
    """A weights file is not safetensors as we read it; one line for the user."""


# Headers are a few hundred KB even for large models; json would hold all of it in memory.
_MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class _Entry:
    """One tensor's header entry, checked: its bytes lie inside the file's data."""

    dtype: str
    shape: list[int]
    start: int  # from where the data starts
    end: int


def _header(path: Path) -> tuple[dict[str, _Entry], int]:
    """Every tensor's entry, and where the data starts."""
    with open_regular(path) as f:
        file_size = os.fstat(f.fileno()).st_size
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: too short for a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > min(_MAX_HEADER_BYTES, file_size - 8):
            raise SafetensorsError(f"{path}: a header of {size} bytes in a file of {file_size}; not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except (ValueError, RecursionError) as exc:
            raise SafetensorsError(f"{path}: the header is not JSON as safetensors writes it ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a mapping of tensor names")
    header.pop("__metadata__", None)
    data_bytes = file_size - 8 - size
    return {name: _entry(path, name, meta, data_bytes) for name, meta in header.items()}, 8 + size


def _entry(path: Path, name: str, meta: object, data_bytes: int) -> _Entry:
    fields = meta if isinstance(meta, dict) else {}
    dtype, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
    if not (
        isinstance(dtype, str)
        and isinstance(shape, list)
        and all(type(d) is int and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
    ):
        raise SafetensorsError(f"{path}: tensor {name!r} lacks a dtype, a shape of sizes or two data offsets")
    start, end = offsets
    if not 0 <= start <= end <= data_bytes:
        raise SafetensorsError(f"{path}: tensor {name!r} lies at bytes {start}..{end}, outside the file's {data_bytes} data bytes")
    return _Entry(dtype, shape, start, end)


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files, each a regular file inside `model_dir`."""
    files = model_files.weight_shards(model_dir)
    if not files:
        raise SafetensorsError(f"no model.safetensors in {model_dir}")
    return files


def tensor_names(model_dir: Path) -> dict[str, tuple[Path, list[int]]]:
    """Every tensor's file and shape."""
    found: dict[str, tuple[Path, list[int]]] = {}
    for path in weight_files(model_dir):
        header, _ = _header(path)
        for name, entry in header.items():
            found[name] = (path, entry.shape)
    return found


def read_tensor(path: Path, name: str) -> np.ndarray:
    """One tensor as float32 (copied out of a memory map of the file)."""
    header, base = _header(path)
    entry = header[name]
    dtype, shape = entry.dtype, entry.shape
    if dtype == "BF16":
        stored: np.dtype[Any] = np.dtype("<u2")
    elif dtype in _NUMPY:
        stored = np.dtype(_NUMPY[dtype]).newbyteorder("<")
    else:
        raise SafetensorsError(f"{path.name}: tensor {name} has dtype {dtype}, which this converter does not read")
    count = math.prod(shape)
    if count * stored.itemsize != entry.end - entry.start:  # checked before the shape reaches numpy's int64
        raise SafetensorsError(f"{path.name}: tensor {name}'s size disagrees with its shape")
    raw = np.memmap(path, dtype=stored, mode="r", offset=base + entry.start, shape=(count,))
    out = (raw.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else raw.astype(np.float32)
    return out.reshape(shape)
