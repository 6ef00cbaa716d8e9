"""The few facts `axchat models` shows of a GGUF file (architecture, context length),
read from its header with the standard library alone: listing must stay instant.

Every count and length in the header is checked against the bytes the file has left
before it is used, so a crafted header is one line (GgufHeaderError), never a read of
2**62 bytes, a seek past the end of the world or a recursion as deep as the file."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from axchat.models.model_files import ModelFileError, open_regular

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # version 1 had 32-bit lengths; llama.cpp refuses it too
# GGUF value types: fixed sizes of the scalars; 8 is a string, 9 an array.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# The fewest bytes one value of each kind takes: a string is at least its length, an
# array its element type and count.
_LEAST = {**{k: struct.calcsize(f) for k, f in _SCALAR.items()}, _STRING: 8, _ARRAY: 12}
_LEAST_KEY_VALUE = 8 + 4 + 1  # key length, value type, the smallest value
_LEAST_TENSOR_INFO = 8 + 4 + 4 + 8  # name length, dimension count, type, offset
_MAX_KEY_BYTES = 65535  # the GGUF specification's limit on a key
_MAX_KEPT_STRING = 1 << 16  # a kept value (an architecture name) is a word, not a document
# llama.cpp reads no nested arrays at all; a little room for other writers.
_MAX_DEPTH = 4


class GgufHeaderError(ModelFileError):
    """A GGUF file's header is not one we read; the message is one line naming the file."""


class _Header:
    """A GGUF header being read, with the file's size to check every claim against."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size

    def left(self) -> int:
        return self.size - self.f.tell()

    def number(self, fmt: str) -> int | float | bool:
        width = struct.calcsize(fmt)
        raw = self.f.read(width)
        if len(raw) != width:
            raise GgufHeaderError(f"the header ends early, at byte {self.f.tell()} of {self.size}")
        return struct.unpack(fmt, raw)[0]  # type: ignore[no-any-return]

    def count(self, what: str, items: str, each: int) -> int:
        """A length or count from the header, refused when `each` bytes per item would
        run past the end of the file."""
        at = self.f.tell()
        n = int(self.number("<Q"))
        if n * each > self.left():
            raise GgufHeaderError(f"{what} of {n} {items} at byte {at} runs past the end of the file ({self.size} bytes)")
        return n

    def skip(self, n: int) -> None:
        self.f.seek(n, os.SEEK_CUR)

    def text(self, what: str, limit: int) -> str:
        n = self.count(what, "bytes", 1)
        if n > limit:
            raise GgufHeaderError(f"{what} of {n} bytes at byte {self.f.tell() - 8}; at most {limit} are read")
        return self.f.read(n).decode("utf-8", errors="replace")

    def value(self, kind: int, keep: bool, depth: int = 0) -> object:
        """One value of type `kind`; only a kept one is decoded, the rest are skipped."""
        if kind in _SCALAR:
            return self.number(_SCALAR[kind])
        if kind == _STRING:
            if keep:  # shown in one-line summaries: no control characters
                return "".join(c if c.isprintable() else "?" for c in self.text("a string", _MAX_KEPT_STRING))
            self.skip(self.count("a string", "bytes", 1))
            return None
        if kind != _ARRAY:
            raise GgufHeaderError(f"unknown value type {kind} at byte {self.f.tell() - 4}")
        if depth == _MAX_DEPTH:
            raise GgufHeaderError(f"arrays nested more than {_MAX_DEPTH} deep at byte {self.f.tell() - 4}")
        inner = int(self.number("<I"))
        if inner not in _LEAST:
            raise GgufHeaderError(f"unknown array element type {inner} at byte {self.f.tell() - 4}")
        count = self.count("an array", "elements", _LEAST[inner])
        if inner in _SCALAR:  # skipped, not read: token tables run to megabytes
            self.skip(count * _LEAST[inner])
        else:
            for _ in range(count):
                self.value(inner, False, depth + 1)
        return None


# general.file_type values (llama.cpp's llama_ftype) for the weight types named here.
FILE_TYPES = {0: "f32", 1: "f16", 7: "q8_0", 15: "q4_k_m", 32: "bf16", 2: "q4_0", 14: "q4_k_s", 17: "q5_k_m", 18: "q6_k"}


def _wanted(key: str) -> bool:
    return key in ("general.architecture", "general.file_type") or key.endswith(".context_length")


def quantization(facts: dict[str, object]) -> str:
    """The weight type general.file_type names, as llama.cpp spells it."""
    kind = facts.get("general.file_type")
    return FILE_TYPES.get(kind, f"file type {kind}") if isinstance(kind, int) else "?"


def read_facts(path: Path) -> dict[str, object]:
    """general.architecture, general.file_type and <arch>.context_length, when the header has them.
    Raises GgufHeaderError (or ModelFileError for a file that is not a regular file)."""
    facts: dict[str, object] = {}
    with open_regular(path) as f:
        header = _Header(f, os.fstat(f.fileno()).st_size)
        try:
            if f.read(4) != _MAGIC:
                raise GgufHeaderError("not a GGUF file")
            version = int(header.number("<I"))
            if version not in _VERSIONS:
                raise GgufHeaderError(f"GGUF version {version}; versions {' and '.join(map(str, _VERSIONS))} are read")
            n_tensors, n_kv = int(header.number("<Q")), int(header.number("<Q"))
            if n_tensors * _LEAST_TENSOR_INFO + n_kv * _LEAST_KEY_VALUE > header.left():
                raise GgufHeaderError(
                    f"the header claims {n_kv} keys and {n_tensors} tensors, more than the file's {header.size} bytes hold"
                )
            for _ in range(n_kv):
                key = header.text("a key", _MAX_KEY_BYTES)
                value = header.value(int(header.number("<I")), _wanted(key))
                if _wanted(key):
                    facts[key] = value
        except GgufHeaderError as exc:
            raise GgufHeaderError(f"{path}: {exc}") from None
    return facts
