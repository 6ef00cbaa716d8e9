"""Which clients are gone. The front door serves routing ids, not connections; this ties
each id to the connection (file descriptor) it spoke on, so that a dropped connection
seen by the socket monitor stops that client's work at once, even while it is queued or
prefilling and nothing is being sent to it; and it treats a client with live requests
that stays silent past the timeout as gone."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

# When a connection drops, its peers are probed after each of these pauses (seconds);
# libzmq tears a dead pipe down within milliseconds, so a peer still reachable after
# the last one is a new connection that got the same fd (see `_probe_after_disconnect`).
DISCONNECT_PROBE_SCHEDULE_S = (0.0, 0.01, 0.05, 0.2, 1.0)


class PeerWatch:
    def __init__(
        self,
        router: zmq.asyncio.Socket,
        *,
        timeout_s: float,
        probe: Callable[[bytes], Awaitable[bool]],
        gone: Callable[[bytes, str], Awaitable[None]],
        live_peers: Callable[[], set[bytes]],
    ) -> None:
        """`probe` sends a frame the client ignores and says whether it could be sent
        (a failed send reports the client gone itself); `gone` cancels a client's work;
        `live_peers` names the clients with requests still live."""
        self._router = router
        self.timeout_s = timeout_s  # 0: silence alone never ends a client
        self._probe = probe
        self._gone = gone
        self._live_peers = live_peers
        self._monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._peers_by_fd: dict[int, set[bytes]] = collections.defaultdict(set)
        self._last_seen: dict[bytes, float] = {}
        self._probes: set[asyncio.Task[None]] = set()

    def seen(self, identity: bytes, fd: int) -> None:
        """A frame came from `identity` on connection `fd` (-1: unknown)."""
        if fd >= 0:
            self._peers_by_fd[fd].add(identity)
        self._last_seen[identity] = time.monotonic()  # any traffic counts as a heartbeat

    async def close(self) -> None:
        probes = list(self._probes)
        for task in probes:
            task.cancel()
        if probes:
            await asyncio.wait(probes)
        self._router.disable_monitor()
        self._monitor.close(linger=0)

    async def expire_silent(self) -> None:
        while True:
            await asyncio.sleep(self.timeout_s / 4)  # a period, not a synchronisation
            cutoff = time.monotonic() - self.timeout_s
            active = self._live_peers()
            for identity in [i for i in active if self._last_seen.get(i, 0) < cutoff]:
                await self._gone(identity, f"silent for over {self.timeout_s:g}s")
            # Forget peers with nothing live, so the map does not grow without bound.
            for identity in [i for i in self._last_seen if i not in active and self._last_seen[i] < cutoff]:
                del self._last_seen[identity]

    async def watch_disconnects(self) -> None:
        while True:
            event = await self._monitor.recv_multipart()
            fd = int.from_bytes(event[0][2:6], "little")  # zmq event frame: u16 event, u32 value
            peers = self._peers_by_fd.pop(fd, set())
            if peers:
                probe = asyncio.create_task(self._probe_after_disconnect(fd, peers), name=f"probe-fd-{fd}")
                self._probes.add(probe)
                probe.add_done_callback(self._probe_done)

    async def _probe_after_disconnect(self, fd: int, peers: set[bytes]) -> None:
        """The fd number may already serve a new peer; only a peer we can no longer
        reach is gone. One probe is not enough: libzmq reports the disconnect from its
        I/O thread before the ROUTER socket has taken in the pipe's teardown, so on a
        busy machine a send right after can still land in the dead pipe. A peer that
        answers every probe of the schedule owns the fd now: keep it mapped, or its own
        disconnect later would go unnoticed (and its prefix-cache entries would stay
        for ever)."""
        for delay in DISCONNECT_PROBE_SCHEDULE_S:
            await asyncio.sleep(delay)  # a deadline for libzmq's teardown, not a synchronisation
            self._router.getsockopt(zmq.EVENTS)  # makes the socket process pending pipe commands
            peers = {p for p in peers if await self._probe(p)}
            if not peers:
                return
        self._peers_by_fd[fd].update(peers)

    def _probe_done(self, task: asyncio.Task[None]) -> None:
        self._probes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("disconnect probe failed", exc_info=task.exception())
