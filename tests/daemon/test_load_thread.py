"""The start-up load runs on a thread of its own that has ended when the load returns
(model_load.in_own_thread): OpenMP keeps a team of worker threads for every thread
that computed, and the loader's team beside the device thread's slowed every step."""

from __future__ import annotations

import threading

import pytest

from axchat.daemon.model_load import in_own_thread


async def test_the_loading_thread_has_ended_when_its_result_arrives() -> None:
    ran_on: list[threading.Thread] = []

    def load(x: int) -> int:
        ran_on.append(threading.current_thread())
        return x * 2

    assert await in_own_thread(load, 21) == 42
    (thread,) = ran_on
    assert thread is not threading.current_thread()
    assert not thread.is_alive()


async def test_a_failed_load_raises_its_own_error_and_its_thread_ends_too() -> None:
    ran_on: list[threading.Thread] = []

    def load() -> None:
        ran_on.append(threading.current_thread())
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        await in_own_thread(load)
    assert not ran_on[0].is_alive()
