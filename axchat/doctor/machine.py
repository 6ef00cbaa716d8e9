"""What a problem report needs to know about this machine's CPU and the engine build:
the CPU model, the instruction-set flags llama.cpp's kernels depend on, and how
`make` built llama.cpp here (written by `axchat.engine_build`)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

# Flags whose presence changes which kernels llama.cpp compiles or runs.
KERNEL_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512vbmi",
    "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16",
)  # fmt: skip
BUILD_RECORD = Path(sys.prefix) / "share" / "axchat" / "engine-build.json"


def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """(CPU model name, its flags), from the first processor's entry."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def kernel_flags(flags: set[str]) -> list[str]:
    return [f for f in KERNEL_FLAGS if f in flags]


def build_record() -> dict[str, object] | None:
    """How the installed llama.cpp was built, if `make` built it."""
    try:
        record: dict[str, object] = json.loads(BUILD_RECORD.read_text())
    except (OSError, ValueError):
        return None
    return record
