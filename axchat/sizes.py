"""Byte counts as people read them (`2.1 MB`), for messages that name a size.

Standard library only: the daemon, `axchat pull` and the frontends all use it."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """Decimal units, as disks and downloads are sized: `512 B`, `1.0 MB`, `2.4 GB`."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
