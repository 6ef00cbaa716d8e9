"""The few facts `axchat models` shows of a GGUF file (architecture, context length),
read from its header with the standard library alone: listing must stay instant."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"GGUF"
# GGUF value types: fixed sizes of the scalars; 8 is a string, 9 an array.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class NotGguf(Exception):
    pass


def _read(f: BinaryIO, fmt: str) -> object:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise NotGguf("truncated header")
    return struct.unpack(fmt, raw)[0]


def _string(f: BinaryIO) -> str:
    n = int(_read(f, "<Q"))  # type: ignore[call-overload]
    return f.read(n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> object:
    if kind in _SCALAR:
        return _read(f, _SCALAR[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        inner, count = int(_read(f, "<I")), int(_read(f, "<Q"))  # type: ignore[call-overload]
        if inner in _SCALAR:  # skipped, not read: token tables run to megabytes
            f.seek(count * struct.calcsize(_SCALAR[inner]), 1)
        else:
            for _ in range(count):
                _value(f, inner)
        return None
    raise NotGguf(f"unknown value type {kind}")


def read_facts(path: Path) -> dict[str, object]:
    """general.architecture and <arch>.context_length, when the header has them."""
    facts: dict[str, object] = {}
    with open(path, "rb") as f:
        if f.read(4) != _MAGIC:
            raise NotGguf(f"{path.name} is not a GGUF file")
        _read(f, "<I")  # version
        _read(f, "<Q")  # tensor count
        n_kv = int(_read(f, "<Q"))  # type: ignore[call-overload]
        for _ in range(n_kv):
            key = _string(f)
            value = _value(f, int(_read(f, "<I")))  # type: ignore[call-overload]
            if key == "general.architecture" or key.endswith(".context_length"):
                facts[key] = value
    return facts
