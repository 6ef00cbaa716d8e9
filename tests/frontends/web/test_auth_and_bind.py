"""API keys and where the bridge may listen."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from conftest import DaemonProcess
from test_openai_api import get, post
from web_bridge import API_KEY, BridgeProcess, keyed_bridge_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def test_key_required_everywhere_but_health_ready_and_the_page(keyed_bridge: BridgeProcess) -> None:
    with keyed_bridge.openai_client("wrong-key") as wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.code == "invalid_api_key"
    for path in ("v1/models", "metrics"):
        status, body, _ = get(keyed_bridge.url + path)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", path
    status, _, _ = post(keyed_bridge.url + "v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert status == 401
    assert get(keyed_bridge.url + "health")[0] == 200
    # A load balancer's health check needs no key, and learns nothing but "ready".
    assert get(keyed_bridge.url + "ready")[:2] == (200, {"status": "ready"})
    with keyed_bridge.openai_client(API_KEY) as right:
        model = right.models.list().data[0].id
        reply = right.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert reply.choices[0].finish_reason in ("length", "stop")


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


def web_refuses(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "axchat", "web", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), **(env or {})},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_blank_or_short_keys_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert "without an API key" in web_refuses("--host", "0.0.0.0", env={"AXCHAT_API_KEY": " "})
    assert "at least 16" in web_refuses("--host", "0.0.0.0", "--api-key", " ")
    short = tmp_path / "key"
    short.write_text("hunter2\n")
    assert "at least 16" in web_refuses("--api-key-file", str(short))


def test_key_file_is_used_and_the_flag_warned_about(daemon: DaemonProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    bridge = BridgeProcess(daemon.socket, "--api-key-file", str(key_file)).wait_listening()
    try:
        assert "API key required" in bridge.log_text() and "visible" not in bridge.log_text()
        assert "can read it" not in bridge.log_text()
        with bridge.openai_client(API_KEY) as right:
            assert right.models.list().data
    finally:
        assert bridge.stop() == 0
    flagged = BridgeProcess(daemon.socket, "--api-key", API_KEY).wait_listening()
    try:
        assert "visible to every user" in flagged.log_text()
    finally:
        assert flagged.stop() == 0


def test_a_key_file_its_group_can_read_is_warned_about(daemon: DaemonProcess, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o640)
    bridge = BridgeProcess(daemon.socket, "--api-key-file", str(key_file)).wait_listening()
    try:
        warned = [line for line in bridge.lines if "can read it" in line]
        assert len(warned) == 1 and "WARNING" in warned[0], bridge.log_text()
        assert f"{key_file} has mode 0640" in warned[0] and f"chmod 600 {key_file}" in warned[0]
        with bridge.openai_client(API_KEY) as right:
            assert right.models.list().data  # a warning, not a refusal
    finally:
        assert bridge.stop() == 0


def test_trickled_headers_and_body_time_out(daemon: DaemonProcess) -> None:
    bridge = BridgeProcess(daemon.socket, "--body-timeout", "0.5", "--header-timeout", "0.5").wait_listening()
    try:
        url = urlsplit(bridge.url)
        with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            reply = conn.recv(4096)  # the rest of the body never comes
        assert reply.startswith(b"HTTP/1.1 408"), reply
        with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # the headers never end
            assert conn.recv(4096) == b""  # closed by the bridge, well before our 30 s timeout
        with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
            assert conn.recv(4096) == b""  # a connection that never sends a byte is closed too
    finally:
        assert bridge.stop() == 0
