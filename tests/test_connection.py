"""The client policies in axchat.connection: backoff to a cap and a deadline, and the
rule that a restart is asked again once, only while nothing of the answer showed.
(The socket itself is exercised by every client test against a real daemon.)"""

from __future__ import annotations

import time

import pytest

from axchat.connection import RESTART_WAIT_S, Backoff, DaemonRestarted, retry_once, retry_once_async

ENDPOINT = "ipc:///tmp/axchat-test-connection.sock"


def test_backoff_doubles_to_its_cap() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next_pause() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_gives_up_when_a_pause_would_pass_the_deadline() -> None:
    assert Backoff(0.05, 1.0, deadline=time.monotonic() + 3600).next_pause_in_time() == 0.05
    assert Backoff(0.05, 1.0, deadline=time.monotonic() + 0.01).next_pause_in_time() is None
    assert Backoff(0.05, 1.0).next_pause_in_time() == 0.05  # no deadline: never gives up


class Attempts:
    """Fails with a restart the first `fail` times; records each call's wait."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.waits: list[float] = []
        self.announced: list[DaemonRestarted] = []

    def __call__(self, wait_s: float = 0.0) -> str:
        self.waits.append(wait_s)
        if len(self.waits) <= self.fail:
            raise DaemonRestarted(ENDPOINT)
        return "answer"


def test_a_restart_before_anything_showed_is_asked_again_once_with_the_restart_wait() -> None:
    attempt = Attempts(fail=1)
    assert retry_once(attempt, shown=lambda: False, announce=attempt.announced.append) == "answer"
    assert attempt.waits == [0.0, RESTART_WAIT_S]
    assert len(attempt.announced) == 1


def test_a_second_restart_is_not_asked_again() -> None:
    attempt = Attempts(fail=2)
    with pytest.raises(DaemonRestarted):
        retry_once(attempt, shown=lambda: False, announce=attempt.announced.append)
    assert len(attempt.waits) == 2


def test_a_restart_after_part_of_the_answer_showed_is_not_asked_again() -> None:
    attempt = Attempts(fail=1)
    with pytest.raises(DaemonRestarted):
        retry_once(attempt, shown=lambda: True, announce=attempt.announced.append)
    assert attempt.waits == [0.0] and attempt.announced == []


async def test_async_retry_waits_for_the_daemon_then_asks_again() -> None:
    attempt = Attempts(fail=1)
    waited: list[float] = []

    async def run() -> str:
        return attempt()

    async def back(wait_s: float) -> bool:
        waited.append(wait_s)
        return True

    assert await retry_once_async(run, shown=lambda: False, announce=attempt.announced.append, back=back) == "answer"
    assert waited == [RESTART_WAIT_S] and len(attempt.waits) == 2


async def test_async_retry_gives_up_when_the_daemon_does_not_come_back() -> None:
    attempt = Attempts(fail=1)

    async def run() -> str:
        return attempt()

    async def never_back(wait_s: float) -> bool:
        return False

    with pytest.raises(DaemonRestarted):
        await retry_once_async(run, shown=lambda: False, announce=attempt.announced.append, back=never_back)
    assert len(attempt.waits) == 1
