"""Host-side input embeddings for the aipu backend, in the Voyager SDK's `.npz` layout
(`embeddings` float16 [vocab, hidden], `vocab_size`, `embedding_dim`, `dtype`).

An uncompressed `.npz` or a `.npy` is memory-mapped: the matrix of a 1B model is half a
gigabyte and only the rows of the tokens fed are ever touched. A compressed `.npz` (the
SDK's own) must be inflated into RAM; that works, and is logged.
"""

from __future__ import annotations

import argparse
import logging
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EMBEDDINGS_KEY = "embeddings"
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header


class EmbeddingsError(ValueError):
    """The embeddings file is absent or not in the expected layout; one line."""


def _memmap_npy_at(path: Path, offset: int) -> np.ndarray:
    """Map the .npy stream that starts `offset` bytes into `path`."""
    with open(path, "rb") as f:
        f.seek(offset)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        data_start = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start, shape=shape, order="F" if fortran else "C")


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    name_len, extra_len = fields[9], fields[10]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def load_embeddings(path: str | Path) -> np.ndarray:
    """The float16 [vocab, hidden] matrix, memory-mapped where the file allows it."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingsError(f"embeddings file {path} does not exist")
    if path.suffix == ".npy":
        matrix = np.load(path, mmap_mode="r")
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(f"{EMBEDDINGS_KEY}.npy")
        except (zipfile.BadZipFile, KeyError) as exc:
            raise EmbeddingsError(f"{path} is not an .npz with an {EMBEDDINGS_KEY!r} array ({exc})") from None
        if info.compress_type == zipfile.ZIP_STORED:
            matrix = _memmap_npy_at(path, _member_data_offset(path, info))
        else:
            log.info(
                "%s is compressed: inflating %.0f MB into RAM (extract it uncompressed to map it)",
                path,
                info.file_size / 1e6,
            )
            with np.load(path) as npz:
                matrix = npz[EMBEDDINGS_KEY]
    if matrix.ndim != 2:
        raise EmbeddingsError(f"{path}: embeddings must be 2-D [vocab, hidden], got shape {matrix.shape}")
    return matrix


def write_embeddings(matrix: np.ndarray, out: str | Path, *, compressed: bool = False) -> Path:
    """Write `matrix` as float16 in the SDK's layout (`.npy` if `out` ends so)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = np.ascontiguousarray(matrix, dtype=np.float16)
    staging = out.with_name(out.name + ".partial" + out.suffix)  # np.savez appends .npz otherwise
    if out.suffix == ".npy":
        np.save(staging, table)
    else:
        save = np.savez_compressed if compressed else np.savez
        save(
            staging,
            embeddings=table,
            vocab_size=np.int64(table.shape[0]),
            embedding_dim=np.int64(table.shape[1]),
            dtype=np.str_("float16"),
        )
    staging.replace(out)  # readers never see half a file
    return out


def extract_embeddings(model: str, out: str | Path, *, compressed: bool = False) -> Path:
    """The input embedding matrix of any Hugging Face causal LM, written to `out`."""
    import torch
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    layer: Any = lm.get_input_embeddings()
    weight = layer.weight.detach().to(torch.float32).numpy()
    return write_embeddings(weight, out, compressed=compressed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="axchat extract-embeddings",
        description="Write a causal LM's input embeddings (float16 [vocab, hidden]) for the aipu backend.",
    )
    p.add_argument("model", help="catalog name, local model directory or Hugging Face hub id")
    p.add_argument("out", help="output .npz (or .npy)")
    p.add_argument(
        "--compressed", action="store_true", help="zip-deflate the .npz, as the SDK ships it (cannot be memory-mapped)"
    )
    args = p.parse_args(argv)
    try:
        from axchat.models.resolve import resolve

        out = extract_embeddings(resolve(args.model).source, args.out, compressed=args.compressed)
    except (OSError, ValueError) as exc:
        print(f"axchat extract-embeddings: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    matrix = load_embeddings(out)
    print(f"wrote {out}: {matrix.shape[0]} x {matrix.shape[1]} float16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
