"""The one waiting line the device and the placer share (actors/device/waiting_line.py):
fair order, places told only when they change, a stopped waiter out and those behind
it told they moved up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from axchat.actors.device.waiting_line import WaitingLine


@dataclass
class Waiter:
    rid: int
    client: str
    queue_position: int = 0


def test_places_are_told_once_each_and_again_only_when_they_change() -> None:
    told: list[tuple[int, int]] = []
    ended: list[int] = []

    async def tell(rid: int, position: int) -> None:
        told.append((rid, position))

    async def end(item: Waiter) -> None:
        ended.append(item.rid)

    async def scenario() -> None:
        line: WaitingLine[Waiter] = WaitingLine(tell)
        for rid, client in [(1, "a"), (2, "a"), (3, "b")]:
            line.push(Waiter(rid, client))
        await line.announce()
        assert told == [(1, 1), (3, 2), (2, 3)]  # b's first goes before a's second
        await line.announce()
        assert len(told) == 3  # nothing moved: nothing said
        told.clear()
        assert await line.stop(3, end) and ended == [3]
        assert told == [(2, 2)]  # moved up behind the stopped one
        assert not await line.stop(3, end)  # no longer here
        first = line.leave()
        assert first.rid == 1 and first.queue_position == 0
        assert line.leave(2).rid == 2 and not line

    asyncio.run(scenario())


def test_a_line_that_may_not_announce_says_nothing_and_tells_later() -> None:
    told: list[tuple[int, int]] = []
    loaded = False

    async def tell(rid: int, position: int) -> None:
        told.append((rid, position))

    async def scenario() -> None:
        line: WaitingLine[Waiter] = WaitingLine(tell, may_announce=lambda: loaded)
        line.push(Waiter(1, "a"))
        await line.announce()
        assert told == []  # waiting for the model: they hear how the load goes instead
        nonlocal loaded
        loaded = True
        await line.announce()
        assert told == [(1, 1)]

    asyncio.run(scenario())
