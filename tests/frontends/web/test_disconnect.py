"""An HTTP client that hangs up cancels its request on the daemon, streaming or not, on
the OpenAI routes and on Ollama's.

A private daemon and bridge, so that its log lines and its running count are this
test's alone.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import HELD, HELD_TOKENS, DaemonProcess, RawClient
from web_bridge import BridgeProcess, started_bridge

from axchat.protocol import v1

pytestmark = pytest.mark.timeout(120)
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def own_daemon(tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tiny_model_dir).wait_ready()
    yield d
    assert d.stop() == 0, d.log_text()


@pytest.fixture(scope="module")
def own_bridge(own_daemon: DaemonProcess) -> Iterator[BridgeProcess]:
    with started_bridge(own_daemon.socket) as bridge:
        yield bridge


def open_request(bridge: BridgeProcess, body: dict[str, object], path: str = "/v1/chat/completions") -> socket.socket:
    """A raw HTTP/1.1 request on a bare socket, so the test controls exactly when it closes."""
    url = urlsplit(bridge.url)
    payload = json.dumps(body).encode()
    conn = socket.create_connection((url.hostname, url.port), timeout=DEADLINE_S)
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return conn


def read_until(conn: socket.socket, needle: bytes) -> bytes:
    seen = b""
    while needle not in seen:
        piece = conn.recv(4096)  # the socket's timeout is the deadline
        assert piece, f"connection closed before {needle!r}; got {seen!r}"
        seen += piece
    return seen


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"


@pytest.fixture
def daemon_status(own_daemon: DaemonProcess) -> Iterator[RawClient]:
    raw = RawClient(own_daemon.socket)
    yield raw
    raw.close()


def running(raw: RawClient) -> int:
    """Each poll is a status round trip, so polling paces itself on the daemon."""
    reply = raw.request(v1.Status())
    assert isinstance(reply, v1.StatusReply)
    return reply.running


def test_closing_a_stream_cancels_on_the_daemon(
    own_daemon: DaemonProcess, own_bridge: BridgeProcess, daemon_status: RawClient
) -> None:
    conn = open_request(own_bridge, {"messages": [{"role": "user", "content": "talk"}], "stream": True, **HELD})
    # The first chunk leaves only after the daemon's first reply: it is generating.
    head = read_until(conn, b"data: {")
    assert head.startswith(b"HTTP/1.1 200")
    conn.close()
    line = own_daemon.wait_for_line("finish=cancelled", timeout_s=DEADLINE_S)
    assert f"Tokens: {HELD_TOKENS}" not in line
    wait_until(lambda: running(daemon_status) == 0, "the daemon runs nothing")
    own_bridge.wait_for_line("closed-by-client", timeout_s=DEADLINE_S)


def test_closing_a_whole_request_cancels_on_the_daemon(
    own_daemon: DaemonProcess, own_bridge: BridgeProcess, daemon_status: RawClient
) -> None:
    conn = open_request(own_bridge, {"messages": [{"role": "user", "content": "talk"}], **HELD})
    wait_until(lambda: running(daemon_status) == 1, "the daemon runs the request")
    conn.close()
    own_daemon.wait_for_line("finish=cancelled", timeout_s=DEADLINE_S)
    wait_until(lambda: running(daemon_status) == 0, "the daemon runs nothing")


@pytest.mark.parametrize("stream", [True, False], ids=["ndjson", "whole"])
def test_closing_an_ollama_request_cancels_on_the_daemon(
    own_daemon: DaemonProcess, own_bridge: BridgeProcess, daemon_status: RawClient, stream: bool
) -> None:
    held = {"num_predict": HELD["max_tokens"], "ignore_eos": True}
    welcome = daemon_status.request(v1.Hello())
    assert isinstance(welcome, v1.Welcome)
    body = {"model": welcome.model, "prompt": "talk", "stream": stream, "options": held}
    conn = open_request(own_bridge, body, path="/api/generate")
    if stream:  # the first line leaves only after the daemon's first reply: it is generating
        assert read_until(conn, b'{"model"').startswith(b"HTTP/1.1 200")
    else:
        wait_until(lambda: running(daemon_status) == 1, "the daemon runs the request")
    conn.close()
    line = own_daemon.wait_for_line("finish=cancelled", timeout_s=DEADLINE_S)
    assert f"Tokens: {HELD_TOKENS}" not in line
    wait_until(lambda: running(daemon_status) == 0, "the daemon runs nothing")
