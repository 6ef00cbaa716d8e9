"""How much memory this process may still take: the machine's available memory, capped
by a cgroup v2 limit (systemd's MemoryMax=, a container's --memory), and the share of it
the KV cache gets by default; and handing the C heap's freed pages back."""

from __future__ import annotations

import ctypes
from pathlib import Path

import psutil

MIB = 1 << 20
# Each KV pool (running sequences, kept prefixes) by default: this share of available
# memory, within these bounds. The ceiling keeps a small model's daemon near what
# llama-server takes for the same work (docs/performance.md); a roomy machine raises it
# with running_kv_mb and prefix_cache_mb. The floor still holds a few contexts of a small model.
KV_SHARE = 1 / 64
KV_FLOOR_BYTES = 32 * MIB
KV_CEILING_BYTES = 256 * MIB


def cgroup_memory_left(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes the cgroup (v2) limit leaves; None without a limit."""
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def available_bytes() -> int:
    """Memory a new allocation can get without swapping or the OOM killer."""
    free = int(psutil.virtual_memory().available)
    left = cgroup_memory_left()
    return free if left is None else min(free, left)


def default_kv_bytes(available: int) -> int:
    """One KV pool's default budget on a machine with `available` bytes free."""
    return int(min(KV_CEILING_BYTES, max(KV_FLOOR_BYTES, available * KV_SHARE)))


def return_freed_heap() -> None:
    """Ask the C allocator to return freed heap pages to the system.

    glibc keeps freed memory in its arenas (after a few large frees it stops using mmap
    for big blocks): without this, a model's pages freed at unload stay resident, and
    what a load only needed for a moment (a vocabulary read for its metadata, parse
    buffers) stays in the process for good. Not glibc: nothing to do."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # this process's own symbols: libc is among them
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
