"""The web bridge in front of a daemon that unloads its model after every request
(`--keep-alive 0`): each request waits through a reload, and the HTTP client just gets
its answer, the same as it would from a loaded model."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, RawClient, chat, short_socket_dir
from test_openai_api import get
from testdaemon import LOAD_GATE_ENV
from web_bridge import started_bridge

from axchat.protocol import v1


@pytest.fixture(scope="module")
def load_gate() -> Path:
    """Open while it exists: a load waits at its weights stage while it is missing."""
    gate = short_socket_dir() / "gate"
    gate.touch()
    return gate


@pytest.fixture(scope="module")
def unloading_daemon(tiny_model_dir: Path, load_gate: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tiny_model_dir, "--keep-alive", "0", env={LOAD_GATE_ENV: str(load_gate)}).wait_ready()
    yield d
    load_gate.touch()
    assert d.stop() == 0, d.log_text()


def test_streamed_and_whole_answers_wait_through_a_reload(unloading_daemon: DaemonProcess) -> None:
    raw = RawClient(unloading_daemon.socket)
    try:
        raw.send("probe", chat("Hello", max_tokens=6))
        frames = list(raw.stream("probe"))
    finally:
        raw.close()
    assert isinstance(frames[0], v1.Loading), frames  # this daemon really reloads each time
    expected = "".join(f.text for f in frames if isinstance(f, v1.Delta))

    with started_bridge(unloading_daemon.socket) as bridge, bridge.openai_client() as client:
        model = client.models.list().data[0].id
        messages = [{"role": "user", "content": "Hello"}]
        whole = client.chat.completions.create(model=model, messages=messages, max_tokens=6)  # type: ignore[arg-type]
        assert whole.choices[0].message.content == expected
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=6, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
        with urllib.request.urlopen(bridge.url + "metrics", timeout=30) as reply:
            metrics = reply.read().decode()
        # Unloaded again by the time of the scrape (keep-alive 0), or still unloading.
        assert re.search(r"^axchat_daemon_model_loaded [01]$", metrics, re.M), metrics


def wait_status(raw: RawClient, done: object, what: str, timeout_s: float = 60.0) -> v1.StatusReply:
    deadline = time.monotonic() + timeout_s
    while True:
        status = raw.request(v1.Status())
        assert isinstance(status, v1.StatusReply)
        if done(status):  # type: ignore[operator]
            return status
        assert time.monotonic() < deadline, f"status never showed {what}: {status}"
        time.sleep(0.05)  # a polling period, bounded by the deadline above


def test_ready_is_503_while_the_model_loads_again(unloading_daemon: DaemonProcess, load_gate: Path) -> None:
    raw = RawClient(unloading_daemon.socket)
    try:
        with started_bridge(unloading_daemon.socket) as bridge:
            wait_status(raw, lambda s: not s.loaded and s.load_stage is None, "unloaded")
            assert get(bridge.url + "ready")[0] == 200  # unloaded and idle: ready for work
            load_gate.unlink()  # the next load waits at its weights stage
            raw.send("reload", chat("Hello", max_tokens=3))
            wait_status(raw, lambda s: s.load_stage is not None, "a load")
            status, body, headers = get(bridge.url + "ready")
            assert status == 503 and "loading its model again" in body["reason"] and int(headers["Retry-After"]) >= 1
            load_gate.touch()
            assert isinstance(list(raw.stream("reload"))[-1], v1.Done)
            assert get(bridge.url + "ready")[0] == 200
    finally:
        load_gate.touch()
        raw.close()
