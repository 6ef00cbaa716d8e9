"""A burst of prompts the tokenizer announced as still arriving (`Admit.more_coming`),
as an idle device waits for it so that they go in one forward: what the planner is
told (`planner.Arrivals`), and the timer that ends the wait it chose."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from axchat.actors.device import planner


class Burst:
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake  # the step loop's, so the deadline runs the next step
        self.more_coming = 0  # prompts the tokenizer was encoding at the latest Admit
        self.last_admit = 0.0
        self.since: float | None = None  # the planner's wait began then
        self._timer: asyncio.TimerHandle | None = None
        self.gather_s = planner.GATHER_S  # the longest an announced burst is waited for

    def admitted(self, more_coming: int) -> None:
        self.more_coming, self.last_admit = more_coming, asyncio.get_running_loop().time()

    def arrivals(self, prefill_ms_per_token: float | None, slots: int, waiting: int) -> planner.Arrivals:
        return planner.Arrivals(
            now=asyncio.get_running_loop().time(),
            more_coming=self.more_coming,
            last_admit=self.last_admit,
            waiting_since=self.since,
            prefill_ms_per_token=prefill_ms_per_token,
            slots=slots,
            gather_s=self.gather_s,
            waiting=waiting,
        )

    def wait_until(self, until: float) -> None:
        """Wait for newcomers until `until`: the next Admit wakes the step loop sooner,
        this timer at the latest."""
        loop = asyncio.get_running_loop()
        if self.since is None:
            self.since = loop.time()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(until, self._wake)

    def ended(self) -> None:
        """The device goes with what came: the next wait is counted afresh, and a burst
        that never arrived (rejected, cancelled) is announced no longer."""
        self.since, self.more_coming = None, 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
