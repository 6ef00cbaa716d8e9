"""API keys and where the bridge may listen."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import openai
import pytest
from conftest import DaemonProcess
from test_openai_api import get, post
from web_bridge import API_KEY, BridgeProcess, keyed_bridge_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def test_key_required_everywhere_but_health_and_the_page(keyed_bridge: BridgeProcess) -> None:
    with keyed_bridge.openai_client("wrong-key") as wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.code == "invalid_api_key"
    for path in ("v1/models", "ready", "metrics"):
        status, body, _ = get(keyed_bridge.url + path)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", path
    status, _, _ = post(keyed_bridge.url + "v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert status == 401
    assert get(keyed_bridge.url + "health")[0] == 200
    with keyed_bridge.openai_client(API_KEY) as right:
        model = right.models.list().data[0].id
        reply = right.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert reply.choices[0].finish_reason in ("length", "stop")
    ready = get(keyed_bridge.url + "ready", {"Authorization": f"Bearer {API_KEY}"})
    assert ready[0] == 200


def test_page_loads_without_key(keyed_bridge: BridgeProcess) -> None:
    with urllib.request.urlopen(keyed_bridge.url, timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_non_loopback_without_key_refuses_to_start(host: str) -> None:
    env_free = {"PATH": "/usr/bin:/bin", "AXCHAT_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, "-m", "axchat", "web", "--host", host, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env_free, "PYTHONPATH": ":".join(sys.path)},
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "without an API key" in lines[0] and host in lines[0]


def test_non_loopback_with_key_starts(daemon: DaemonProcess) -> None:
    bridge = BridgeProcess(daemon.socket, "--host", "0.0.0.0", "--api-key", API_KEY).wait_listening()
    try:
        assert "API key required" in bridge.log_text()
    finally:
        assert bridge.stop() == 0, bridge.log_text()
