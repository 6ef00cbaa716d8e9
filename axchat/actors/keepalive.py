"""Keep-alive: the model's residency on the device (loaded, unloading, unloaded,
loading), the idle timer that unloads it, and freeing what it held. The device actor
drives these; they hold no scheduling of their own."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import enum
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# How often a request waiting for a reload hears where it stands: often enough that
# a client sees life (and its stall timeout never fires), rarely enough to be noise.
LOADING_TICK_S = 1.0


class Residency(enum.Enum):
    LOADED = "loaded"
    UNLOADING = "unloading"  # close() is running on the device thread
    UNLOADED = "unloaded"
    LOADING = "loading"  # the loader is running on the device thread


@dataclass
class LoadProgress:
    """One load in progress, as waiting clients are told of it."""

    stage: str = "config"  # the loader's first stage (daemon/model_load.STAGES)
    started: float = field(default_factory=time.monotonic)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


class IdleTimer:
    """Calls `expired` once the device has had no request for `keep_alive_s` seconds;
    never when `keep_alive_s` is None (keep the model for ever)."""

    def __init__(self, keep_alive_s: float | None, expired: Callable[[], None]) -> None:
        self.keep_alive_s = keep_alive_s
        self._expired = expired
        self._handle: asyncio.TimerHandle | None = None
        self._deadline_wall: float | None = None

    def start(self) -> None:
        """The device just became idle: count from now (restarting any count)."""
        self.stop()
        if self.keep_alive_s is None:
            return
        self._deadline_wall = time.time() + self.keep_alive_s
        self._handle = asyncio.get_running_loop().call_later(self.keep_alive_s, self._fire)

    def stop(self) -> None:
        """A request arrived, or the model is gone: no unload is due."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._deadline_wall = None

    @property
    def unloads_at(self) -> float | None:
        """Unix time of the unload this timer will cause; None when none is due."""
        return self._deadline_wall

    def _fire(self) -> None:
        self._handle = None
        self._deadline_wall = None
        self._expired()


def free_device_memory() -> None:
    """After the backend's last reference is dropped: collect it now rather than at some
    later collection, hand cached CUDA blocks back so other processes can use them, and
    ask the C allocator to return freed heap pages to the system."""
    gc.collect()
    torch = sys.modules.get("torch")  # never import it here: the AIPU path has no torch
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    _trim_c_heap()


def _trim_c_heap() -> None:
    # glibc keeps freed memory in its arenas (after a few large frees it stops using
    # mmap for big blocks), so without a trim the weights' pages stay resident: the
    # process would look as big unloaded as loaded. Not glibc: nothing to do.
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
