"""Keep-alive: the model's residency on the device (loaded, unloading, unloaded,
loading), the idle timer that unloads it, unloading and loading it again on the device
thread, and freeing what it held. The device actor decides when, and tells waiting
requests; nothing here schedules."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from axchat import host_memory

if TYPE_CHECKING:
    from axchat.actors.backends.base import DeviceBackend
    from axchat.actors.device.device_thread import DeviceThread

log = logging.getLogger(__name__)

# How often a request waiting for a reload hears where it stands: often enough that
# a client sees life (and its stall timeout never fires), rarely enough to be noise.
LOADING_TICK_S = 1.0

# Loads a backend on the device thread, telling the callback each stage it enters.
BackendLoader = Callable[[Callable[[str], None]], "DeviceBackend"]


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


class ResidentModel:
    """The backend while it is on the device, and its going and coming back: unloaded
    when the idle timer fires, loaded again when a request wants it. The one holder of
    the backend: dropping it here is what frees the model. The device actor says who
    waits and tells them; this object decides nothing about requests."""

    def __init__(
        self,
        backend: DeviceBackend,
        thread: DeviceThread,
        loader: BackendLoader | None,
        keep_alive_s: float | None,
        *,
        wanted: Callable[[], bool],
        tell_loading: Callable[[LoadProgress], Awaitable[None]],
        load_ended: Callable[[Exception | None], Awaitable[None]],
        failed: Callable[[BaseException], None],
        name: str = "device",
        moved: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        """`wanted`: requests are running or waiting; `tell_loading`: tell each waiting
        request where the load stands; `load_ended`: a reload finished (None) or failed;
        `failed`: an unload or a load task died (a bug: it would wedge every request);
        `moved`: the model is on its way out (False: the idle timer fired) or back (True)."""
        self.backend: DeviceBackend | None = backend  # None while not loaded
        self.state = Residency.LOADED
        self._thread = thread
        self._loader = loader
        self._wanted = wanted
        self._tell_loading = tell_loading
        self._load_ended = load_ended
        self._failed = failed
        self._moved = moved
        self._name = name
        # Without a loader it could never come back: keep it for ever.
        self.idle = IdleTimer(keep_alive_s if loader is not None else None, self._idle_expired)
        self.load: LoadProgress | None = None  # the load in progress
        self._load_changed = asyncio.Event()  # the load entered a new stage
        self.last_load_s: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        """Still holding the model: loaded, or unloading (until freeing it has finished)."""
        return self.state in (Residency.LOADED, Residency.UNLOADING)

    def wanted_back(self) -> LoadProgress | None:
        """A request arrived while the model is not loaded: start loading it unless a
        load is under way (or will start once unloading ends). The load in progress,
        if one is."""
        if self.state is Residency.UNLOADED:
            self._begin_reload()
        elif self.state is Residency.LOADING:
            return self.load
        return None

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        self._task = asyncio.create_task(coro, name=f"{self._name}-{what}")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._failed(exc)

    def _idle_expired(self) -> None:
        if self._wanted() or self.state is not Residency.LOADED:
            return  # a request slipped in as the timer fired
        self.state = Residency.UNLOADING
        self._spawn(self._unload(), "unload")

    async def _unload(self) -> None:
        """Close the backend on the device thread (after any release still queued there),
        drop it, and free what it held."""
        backend, self.backend = self.backend, None
        assert backend is not None
        log.info("keep-alive: no request for %gs; unloading the model", self.idle.keep_alive_s)
        if self._moved is not None:
            await self._moved(False)
        try:
            await self._thread.run(backend.close)
        except Exception:
            log.exception("closing the backend failed; dropping it anyway")
        gone = weakref.ref(backend)
        del backend
        await self._thread.run(free_device_memory)
        self.state = Residency.UNLOADED
        if gone() is None:
            log.info("keep-alive: model unloaded and its memory freed; the next request loads it again")
        else:
            # A bug: something else holds the backend, so its memory stays taken.
            log.warning("keep-alive: model unloaded but still referenced elsewhere; its memory is not freed")
        if self._wanted():
            self._begin_reload()  # a request came while it was unloading

    def _begin_reload(self) -> None:
        self.state = Residency.LOADING
        self.load = LoadProgress()
        self._spawn(self._reload(self.load), "reload")

    async def _reload(self, progress: LoadProgress) -> None:
        assert self._loader is not None
        loop = asyncio.get_running_loop()

        def stage(name: str) -> None:  # called on the device thread
            loop.call_soon_threadsafe(self._stage_entered, progress, name)

        log.info("keep-alive: a request arrived; loading the model again")
        teller = asyncio.create_task(self._tell(progress), name=f"{self._name}-loading-events")
        try:
            backend = await self._thread.run(self._loader, stage)
        except Exception as exc:
            log.exception("reloading the model failed")
            self.load, self.state = None, Residency.UNLOADED
            await self._load_ended(exc)
            return
        finally:
            teller.cancel()
            await asyncio.wait([teller])
        self.last_load_s = progress.elapsed_s()
        self.backend, self.load, self.state = backend, None, Residency.LOADED
        log.info("keep-alive: model loaded again in %.1fs", self.last_load_s)
        if self._moved is not None:
            await self._moved(True)
        await self._load_ended(None)

    def _stage_entered(self, progress: LoadProgress, name: str) -> None:
        progress.stage = name
        self._load_changed.set()

    async def _tell(self, progress: LoadProgress) -> None:
        """Waiting requests hear where the load stands: at each new stage and once a
        tick between, so their clients see progress rather than silence."""
        while True:
            self._load_changed.clear()
            await self._tell_loading(progress)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOADING_TICK_S):
                    await self._load_changed.wait()

    async def close(self) -> None:
        """At the actor's close: stop any unload or load, then free the device (queued
        behind an unload or a load still running there; a cancelled load's backend is
        lost with the process)."""
        self.idle.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # waits without swallowing our own cancel
        if self.backend is not None:
            await self._thread.run(self.backend.close)


def free_device_memory() -> None:
    """After the backend's last reference is dropped: collect it now rather than at some
    later collection, hand cached CUDA blocks back so other processes can use them, and
    ask the C allocator to return freed heap pages to the system."""
    gc.collect()
    torch = sys.modules.get("torch")  # never import it here: the AIPU path has no torch
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    host_memory.return_freed_heap()
