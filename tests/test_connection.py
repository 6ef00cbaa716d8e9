"""The client policies in axchat.connection: backoff to a cap and a deadline, the rule
that a restart is asked again once, only while nothing of the answer showed, and how
both faces of the manager behave where no daemon is. (Against a real daemon the
manager is exercised by every frontend test.)"""

from __future__ import annotations

import asyncio
import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO, cast

import pytest

from axchat import autostart, connection
from axchat.connection import (
    RESTART_WAIT_S,
    Backoff,
    DaemonRestarted,
    DaemonUnavailable,
    RequestFailed,
    retry_once,
    retry_once_async,
)
from tests.conftest import short_socket_dir

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


# ---------------------------------------------------------------- the manager, no daemon


@pytest.fixture
def nobody() -> Iterator[str]:
    """A socket path in a private directory where no daemon listens."""
    where = short_socket_dir()
    where.chmod(0o700)
    yield str(Path(where) / "axchat.sock")
    shutil.rmtree(where)


def test_blocking_connect_waits_as_long_as_asked_then_says_how_to_start_one(nobody: str) -> None:
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="axchat serve"):
        connection.connect(nobody, wait_s=0.3)
    assert 0.1 <= time.monotonic() - started < 3.0  # tried again, and gave up before a pause past 0.3s


def test_probe_of_an_empty_socket_is_none(nobody: str) -> None:
    assert connection.probe(nobody, timeout_s=0.2) is None


async def _reports(socket: str, count: int, start_progress: io.StringIO | None) -> list[tuple[str, float]]:
    """The first `count` failures `connect_async` reports where no daemon is."""
    heard: list[tuple[str, float]] = []
    enough = asyncio.Event()

    def unavailable(exc: DaemonUnavailable | RequestFailed, pause_s: float) -> None:
        heard.append((str(exc), pause_s))
        if len(heard) == count:
            enough.set()

    task = asyncio.create_task(
        connection.connect_async(
            socket,
            backoff=Backoff(0.01, 0.02),
            unavailable=unavailable,
            start_progress=cast(TextIO, start_progress),
            connect_timeout_s=0.2,
        )
    )
    async with asyncio.timeout(10):
        await enough.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return heard[:count]


async def test_async_connect_backs_off_to_its_cap(nobody: str) -> None:
    heard = await _reports(nobody, 4, start_progress=None)
    assert [pause for _, pause in heard] == [0.01, 0.02, 0.02, 0.02]
    assert all("axchat serve" in why for why, _ in heard)


async def test_async_connect_tries_to_start_a_daemon_once(nobody: str, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[str | None] = []

    def cannot_start(socket: str | None, progress: TextIO) -> None:
        starts.append(socket)
        raise DaemonUnavailable("the daemon it started exited with code 1; the end of its log:\nlog lines")

    monkeypatch.setattr(autostart, "start_daemon", cannot_start)
    heard = await _reports(nobody, 3, start_progress=io.StringIO())
    assert starts == [nobody]  # once, however often the hello fails after it
    assert heard[0][0] == "could not start one: the daemon it started exited with code 1; the end of its log:"
    assert all("axchat serve" in why for why, _ in heard[1:])
