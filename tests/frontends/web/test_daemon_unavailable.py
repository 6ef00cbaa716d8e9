"""What HTTP clients see when the daemon is not there or is shutting down: 503 with
Retry-After, in OpenAI's error shape."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HELD, DaemonProcess, short_socket_dir
from test_disconnect import open_request, read_until
from test_openai_api import get, parse_prometheus, post
from web_bridge import BridgeProcess, started_bridge

pytestmark = pytest.mark.timeout(120)
HELLO = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()


@pytest.fixture
def orphan_bridge() -> Iterator[BridgeProcess]:
    with started_bridge(str(short_socket_dir() / "nobody.sock")) as bridge:
        yield bridge


def test_no_daemon_is_503_with_retry_after(orphan_bridge: BridgeProcess) -> None:
    assert get(orphan_bridge.url + "health")[0] == 200
    status, body, _ = get(orphan_bridge.url + "ready")
    assert status == 503 and body["status"] == "unavailable"
    status, body, headers = post(orphan_bridge.url + "v1/chat/completions", HELLO)
    assert status == 503 and body["error"]["code"] == "daemon_unavailable"
    assert int(headers["Retry-After"]) >= 1
    assert "axchat serve" in body["error"]["message"]
    with urllib.request.urlopen(orphan_bridge.url + "metrics", timeout=30) as resp:
        assert parse_prometheus(resp.read().decode())["axchat_daemon_up"] == 0


def test_draining_daemon_is_503_shutting_down(tiny_model_dir: Path) -> None:
    daemon = DaemonProcess(tiny_model_dir, "--drain-timeout", "60").wait_ready()
    try:
        with started_bridge(daemon.socket) as bridge:
            # A long stream keeps the daemon draining, not stopped, after SIGTERM.
            conn = open_request(
                bridge,
                {
                    "messages": [{"role": "user", "content": "talk"}],
                    "stream": True,
                    **HELD,
                },
            )
            read_until(conn, b"data: {")
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.wait_for_line("draining:")
            # A load balancer's health check sends new conversations elsewhere now.
            status, body, headers = get(bridge.url + "ready")
            assert status == 503 and "shutting down" in body["reason"] and int(headers["Retry-After"]) >= 1
            status, body, headers = post(bridge.url + "v1/chat/completions", HELLO)
            assert status == 503 and body["error"]["code"] == "shutting_down"
            assert int(headers["Retry-After"]) >= 1
            conn.close()  # cancels the stream, so the daemon can finish draining
            assert daemon.stop() == 0, daemon.log_text()
    finally:
        daemon.stop()


def test_daemon_killed_mid_stream_ends_the_stream_with_an_error_event(tiny_model_dir: Path) -> None:
    """Not a cut connection: the client (or a balancer's client) reads why, and may ask again."""
    daemon = DaemonProcess(tiny_model_dir).wait_ready()
    try:
        with started_bridge(daemon.socket) as bridge:
            conn = open_request(bridge, {"messages": [{"role": "user", "content": "talk"}], "stream": True, **HELD})
            read_until(conn, b"data: {")
            assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
            tail = read_until(conn, b"data: [DONE]")
            errors = [json.loads(line[6:]) for line in tail.split(b"\n") if line.startswith(b'data: {"error"')]
            assert len(errors) == 1 and errors[0]["error"]["code"] == "daemon_restarted", tail
            assert "dropped mid-request" in errors[0]["error"]["message"]
            conn.close()
    finally:
        daemon.stop()
