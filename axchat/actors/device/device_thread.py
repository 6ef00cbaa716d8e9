"""The one thread that calls the backend, and the readings taken there.

Every call into a backend (forwards, KV edits, reads for status and telemetry) runs on
this thread, in the order it was asked for: an engine context has one owner thread
(the Axelera runtime requires it), and a release queued behind a forward can never free
KV under it. After each job the backend's cheap counters are read there too, so that a
status reply can be answered at once from the latest reading while a long forward runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from axchat.actors.backends.base import DeviceBackend

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class BackendReadings:
    """The backend's counters and sensors at one moment (all zero while unloaded)."""

    kv_sequences: int = 0
    prefix_cache_entries: int = 0
    prefix_cache_bytes: int = 0
    temperature_c: float | None = None

    @classmethod
    def of(cls, backend: DeviceBackend | None) -> BackendReadings:
        """Read `backend`; call on the device thread only."""
        if backend is None:
            return cls()
        entries, nbytes = backend.prefix_cache_usage()
        return cls(backend.live_sequences(), entries, nbytes, backend.temperature_c())


class DeviceThread:
    """A single worker thread for the life of the device actor. `backend` is asked
    for after every job (it may be unloaded or replaced meanwhile), never kept."""

    def __init__(self, backend: Callable[[], DeviceBackend | None], name: str = "axchat-device") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._backend = backend
        self._in_flight = 0
        self.readings = BackendReadings()  # as of the end of the latest job

    @property
    def idle(self) -> bool:
        """No job queued or running: a job asked for now starts at once."""
        return self._in_flight == 0

    def _job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:  # on the device thread
        try:
            return fn(*args)
        finally:
            try:
                self.readings = BackendReadings.of(self._backend())
            except Exception:  # a reading must never stand in for the job's own outcome
                log.exception("reading the backend's counters failed")

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue `fn(*args)` behind everything asked for before; from the event loop."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, self._job, fn, args)
        self._in_flight += 1
        future.add_done_callback(self._done)  # runs on the loop, as `submit` does
        return future

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue `fn(*args)` and go on; a failure is logged (nobody waits for it)."""
        self.submit(fn, *args).add_done_callback(self._log_failure)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the device thread, in turn; its result or its exception."""
        result: T = await self.submit(fn, *args)
        return result

    async def read(self) -> BackendReadings:
        """Fresh readings when the thread is free; else those after the latest job,
        rather than waiting behind a forward (status must answer within milliseconds)."""
        if self.idle:
            await self.submit(lambda: None)
        return self.readings

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._in_flight -= 1

    @staticmethod
    def _log_failure(future: asyncio.Future[Any]) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            log.error("a device-thread job failed", exc_info=exc)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
