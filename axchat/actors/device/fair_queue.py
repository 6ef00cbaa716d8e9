"""The waiting line in front of the device: round-robin across clients, so one client
with many requests cannot starve another; first come, first served within a client."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Waiting(Protocol):
    @property
    def rid(self) -> int: ...
    @property
    def client(self) -> str: ...


T = TypeVar("T", bound=Waiting)


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        # Clients in turn order; each with its own FIFO. The head client goes next.
        self._lines: collections.OrderedDict[str, collections.deque[T]] = collections.OrderedDict()

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def __bool__(self) -> bool:
        return bool(self._lines)

    def push(self, item: T) -> None:
        self._lines.setdefault(item.client, collections.deque()).append(item)

    def pop(self) -> T:
        """The next item: the head client's oldest, and that client goes to the back."""
        client, line = next(iter(self._lines.items()))
        item = line.popleft()
        if line:
            self._lines.move_to_end(client)
        else:
            del self._lines[client]
        return item

    def take(self, rid: int) -> T | None:
        """Serve this item out of order (a placer skipping items that wait for another
        device): as `pop`, its client then goes to the back of the turn order."""
        item = self.remove(rid)
        if item is not None and item.client in self._lines:
            self._lines.move_to_end(item.client)
        return item

    def remove(self, rid: int) -> T | None:
        for client, line in self._lines.items():
            for item in line:
                if item.rid == rid:
                    line.remove(item)
                    if not line:
                        del self._lines[client]
                    return item
        return None

    def in_order(self) -> Iterator[T]:
        """Items in the order `pop` would return them (position 1 first)."""
        lines = [list(line) for line in self._lines.values()]
        depth = max((len(line) for line in lines), default=0)
        for i in range(depth):
            for line in lines:
                if i < len(line):
                    yield line[i]

    def positions(self) -> dict[int, int]:
        return {item.rid: pos for pos, item in enumerate(self.in_order(), start=1)}
