"""The one waiting line in front of a device, or of the placer's devices: the fair order
(`FairQueue`), each waiter's place in it as its client last heard it, and taking a
waiter out of line when its request stops. The device and the placer each hold one and
keep no positions of their own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from axchat.actors.device.fair_queue import FairQueue


class Waiter(Protocol):
    @property
    def rid(self) -> int: ...
    @property
    def client(self) -> str: ...
    queue_position: int  # the place its client last heard; 0 once it left the line


W = TypeVar("W", bound=Waiter)


class WaitingLine(FairQueue[W]):
    def __init__(
        self,
        tell_position: Callable[[int, int], Awaitable[None]],
        may_announce: Callable[[], bool] = lambda: True,
    ) -> None:
        """`tell_position(rid, position)` tells a waiter's client where it stands;
        `may_announce`: False while places mean nothing to the waiters (a device whose
        model is away tells them how its load goes instead)."""
        super().__init__()
        self._tell_position = tell_position
        self._may_announce = may_announce

    def leave(self, rid: int | None = None) -> W:
        """The next waiter out of line, for a slot (`rid`: that one, out of turn)."""
        item = self.pop() if rid is None else self.take(rid)
        assert item is not None, f"request {rid} is not in the line"
        item.queue_position = 0
        return item

    async def announce(self) -> None:
        """Tell each waiter whose place changed where it stands now (1: next)."""
        if not self._may_announce():
            return
        for position, item in enumerate(self.in_order(), start=1):
            if item.queue_position != position:
                item.queue_position = position
                await self._tell_position(item.rid, position)

    async def stop(self, rid: int, end: Callable[[W], Awaitable[None]]) -> bool:
        """End `rid` with `end` if it waits here, and tell those behind it that they
        moved up; False when it does not wait here."""
        item = self.remove(rid)
        if item is None:
            return False
        await end(item)
        await self.announce()
        return True
