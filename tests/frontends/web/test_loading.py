"""The web bridge in front of a daemon that unloads its model after every request
(`--keep-alive 0`): each request waits through a reload, and the HTTP client just gets
its answer, the same as it would from a loaded model."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, RawClient, chat
from web_bridge import started_bridge

from axchat.protocol import v1


@pytest.fixture(scope="module")
def unloading_daemon(tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tiny_model_dir, "--keep-alive", "0").wait_ready()
    yield d
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
