"""The event loop every long-running axchat process runs on: uvloop where it is
installed (a default dependency off Windows), else asyncio's own. On two cores each
cycle the loop spends per message is taken from the engine, and uvloop's is the cheaper."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio runs the same code
        return asyncio.run(main)
    return uvloop.run(main)
