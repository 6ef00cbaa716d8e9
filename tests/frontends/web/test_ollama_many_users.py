"""Eight people chat through one bridge with Ollama's own client at once: each is its own
end user to the daemon, so each gets the same share of the device, and every stream
finishes. A private daemon: the test releases its held requests.

Fairness is measured without assuming the machine's speed: the streams are held (each
step of theirs paced, tests/testdaemon.py), and once all eight are mid-stream the tokens
each gains over the same stretch of time are compared."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest
from conftest import DaemonProcess, serving
from testdaemon import HELD_MIN_TOKENS
from web_bridge import BridgeProcess, started_bridge

pytestmark = pytest.mark.timeout(180)
PEOPLE = 8
# The shortest reply the test daemon paces while held: all of it, once released, is
# quick for eight streams together.
TOKENS = HELD_MIN_TOKENS
# Tokens each stream gains between the two readings: enough that a reader thread a
# token or two behind cannot move the ratio much.
STRETCH = 40
DEADLINE_S = 60.0
TOPICS = ["rain", "bread", "computers", "the sea", "music", "trees", "stars", "trains"]


@pytest.fixture(scope="module", name="own_daemon")
def own_daemon_fixture(tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    yield from serving(tiny_model_dir)


@pytest.fixture(scope="module", name="own_bridge")
def own_bridge_fixture(own_daemon: DaemonProcess) -> Iterator[BridgeProcess]:
    with started_bridge(own_daemon.socket) as bridge:
        yield bridge


class Streams:
    """The eight streams' chunk counts as their reader threads see them."""

    def __init__(self) -> None:
        self.counts = [0] * PEOPLE
        self.finals: list[ollama.ChatResponse | None] = [None] * PEOPLE
        self.failures: list[BaseException] = []
        self.changed = threading.Condition()

    def read(self, bridge: BridgeProcess, model: str, i: int) -> None:
        try:
            # A client of its own: its own connection, so its own end user to the daemon.
            with ollama.Client(host=bridge.url, timeout=DEADLINE_S) as client:
                options = {"num_predict": TOKENS, "ignore_eos": True}
                question = [{"role": "user", "content": f"Person {i}: tell me about {TOPICS[i]}"}]
                for part in client.chat(model=model, messages=question, options=options, stream=True):
                    with self.changed:
                        if part.done:
                            self.finals[i] = part
                        else:
                            self.counts[i] += 1
                        self.changed.notify_all()
        except BaseException as exc:  # handed to the test, which fails on it
            with self.changed:
                self.failures.append(exc)
                self.changed.notify_all()

    def wait(self, condition: object, what: str) -> list[int]:
        """The counts once `condition(counts)` holds (or a stream failed), within the deadline."""
        with self.changed:
            met = self.changed.wait_for(lambda: self.failures or condition(self.counts), timeout=DEADLINE_S)  # type: ignore[operator]
            assert met, f"timed out waiting until {what}: {self.counts}"
            assert not self.failures, self.failures
            return list(self.counts)


def test_eight_users_stream_at_one_pace_and_all_finish(own_daemon: DaemonProcess, own_bridge: BridgeProcess) -> None:
    with ollama.Client(host=own_bridge.url, timeout=DEADLINE_S) as client:
        model = client.list().models[0].model
    assert model is not None
    streams = Streams()
    readers = [threading.Thread(target=streams.read, args=(own_bridge, model, i), daemon=True) for i in range(PEOPLE)]
    for reader in readers:
        reader.start()
    try:
        before = streams.wait(lambda counts: min(counts) >= 1, "all eight are mid-stream")
        after = streams.wait(
            lambda counts: min(c - b for c, b in zip(counts, before, strict=True)) >= STRETCH,
            f"each has gained {STRETCH} tokens",
        )
        gained = [a - b for a, b in zip(after, before, strict=True)]
        assert max(gained) / min(gained) <= 1.5, gained
    finally:
        own_daemon.release_held()
    for reader in readers:
        reader.join(timeout=DEADLINE_S)
    assert not streams.failures, streams.failures
    assert all(
        final is not None and final.done_reason == "length" and final.eval_count == TOKENS for final in streams.finals
    ), streams.finals
