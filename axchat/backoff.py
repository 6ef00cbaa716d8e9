"""Pauses between tries that double to a cap, with an optional deadline: every
reconnect and every wait for a lock backs off the same way."""

from __future__ import annotations

import time


class Backoff:
    """Pauses between tries that double from `first_s` up to `cap_s`."""

    def __init__(self, first_s: float, cap_s: float, *, deadline: float | None = None) -> None:
        self.cap_s = cap_s
        self.deadline = deadline
        self._next = first_s

    def next_pause(self) -> float:
        pause = self._next
        self._next = min(pause * 2, self.cap_s)
        return pause

    def next_pause_in_time(self) -> float | None:
        """The next pause, or None once it would end past the deadline: give up then."""
        if self.deadline is not None and time.monotonic() + self._next >= self.deadline:
            return None
        return self.next_pause()
