"""Nothing one HTTP request holds can end another's stream: the bridge's one connection to
the daemon carries every user, so a request too big for the daemon is refused at the
bridge (413, or 400 for too many messages) before it is sent, and the streams beside it
go on. Past its cap on requests at once the bridge says 503 with Retry-After. If the
connection does drop (the daemon restarted), the next request is served again."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HELD, DaemonProcess
from test_disconnect import open_request, read_until
from web_bridge import BridgeProcess, bridge_fixture, started_bridge  # noqa: F401

from axchat.frontends.web.app import MAX_BODY_BYTES
from axchat.protocol import v1


def post(bridge: BridgeProcess, body: bytes) -> tuple[int, dict[str, object], dict[str, str]]:
    request = urllib.request.Request(
        bridge.url + "v1/chat/completions", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def chunks_after(conn: socket.socket, n: int) -> None:
    """n more SSE events of a running stream, none of them an error."""
    for _ in range(n):
        seen = read_until(conn, b"\n\n")
        assert b'"error"' not in seen, seen


@pytest.fixture
def streams(bridge: BridgeProcess) -> Iterator[list[socket.socket]]:
    """Three held streams of three users through the bridge, each past its first token."""
    conns = []
    for i in range(3):
        body = {"messages": [{"role": "user", "content": f"stream {i}"}], "stream": True, "user": f"u{i}", **HELD}
        conn = open_request(bridge, body)
        read_until(conn, b"data: {")
        conns.append(conn)
    yield conns
    for conn in conns:
        conn.close()  # the bridge cancels them on the daemon


def test_three_streams_survive_an_8_mib_request_of_empty_messages(bridge: BridgeProcess, streams: list[socket.socket]) -> None:
    empty = b'{"role":"user"},'
    count = (MAX_BODY_BYTES - 100) // len(empty)
    body = b'{"messages":[' + empty * (count - 1) + empty[:-1] + b"]}"
    assert len(body) < MAX_BODY_BYTES and count > 500_000
    status, error, _ = post(bridge, body)
    assert status == 400 and error["error"]["param"] == "messages", error  # type: ignore[index]
    assert f"<= {v1.MAX_MESSAGES}" in error["error"]["message"]  # type: ignore[index]
    for conn in streams:
        chunks_after(conn, 3)


def test_a_request_over_the_daemons_frame_limit_is_413_and_the_streams_go_on(
    bridge: BridgeProcess, streams: list[socket.socket]
) -> None:
    # Under the bridge's body limit and its message count, over the daemon's 1 MiB frames.
    messages = [{"role": "user", "content": "w" * 1500} for _ in range(4000)]
    status, error, _ = post(bridge, json.dumps({"messages": messages}).encode())
    assert status == 413 and error["error"]["code"] == "request_too_large", error  # type: ignore[index]
    assert "the daemon accepts at most 1.0 MB" in error["error"]["message"]  # type: ignore[index]
    for conn in streams:
        chunks_after(conn, 3)
    status, reply, _ = post(bridge, json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode())
    assert status == 200 and reply["usage"]["completion_tokens"] == 2  # type: ignore[index]


def test_past_its_cap_the_bridge_says_503_with_retry_after(daemon: DaemonProcess) -> None:
    with started_bridge(daemon.socket, "--max-requests", "2") as bridge:
        held = [open_request(bridge, {"messages": [{"role": "user", "content": "x"}], "stream": True, **HELD}) for _ in range(2)]
        try:
            for conn in held:
                read_until(conn, b"data: {")
            status, error, headers = post(bridge, b'{"messages":[{"role":"user","content":"one more"}]}')
            assert status == 503 and error["error"]["code"] == "server_busy" and headers["Retry-After"] == "1", error  # type: ignore[index]
            with urllib.request.urlopen(bridge.url + "health", timeout=30) as health:
                assert health.status == 200  # liveness is not capped
        finally:
            held[0].close()
        # A slot is free once the bridge has ended the closed stream's handler.
        deadline = time.monotonic() + 30
        while (status := post(bridge, b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}')[0]) == 503:
            assert time.monotonic() < deadline, "the closed stream's slot was never freed"
        assert status == 200
        held[1].close()


def test_after_the_daemon_restarts_the_same_bridge_serves_again(tiny_model_dir: Path) -> None:
    first = DaemonProcess(tiny_model_dir).wait_ready()
    try:
        with started_bridge(first.socket) as bridge:
            ok = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
            assert post(bridge, ok)[0] == 200
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL
            second = DaemonProcess(tiny_model_dir, socket=first.socket).wait_ready()
            try:
                status, reply, _ = post(bridge, ok)
                assert status == 200 and reply["usage"]["completion_tokens"] == 2, reply  # type: ignore[index]
            finally:
                assert second.stop() == 0
    finally:
        first.stop()
