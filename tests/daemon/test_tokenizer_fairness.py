"""One client's tokenizing cannot hold up another's: with one client's huge
conversation held inside the tokenizer (explicitly, by the test gate), another client's
short request is tokenized, generated and finished, and only then is the big one let go."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, RawClient, chat, short_socket_dir
from testdaemon import HOLD_MARKER, TOKENIZE_GATE_ENV

from axchat.protocol import v1


@pytest.fixture(scope="module")
def gated(tiny_model_dir: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    gate = short_socket_dir() / "release"
    d = DaemonProcess(tiny_model_dir, env={TOKENIZE_GATE_ENV: str(gate)}).wait_ready()
    yield d, gate
    gate.touch()
    assert d.stop() == 0, d.log_text()


def big_conversation(turns: int = 120) -> list[v1.ChatMessage]:
    msgs = [v1.ChatMessage(role="system", content=f"{HOLD_MARKER} be brief")]
    for i in range(turns // 2):
        msgs.append(v1.ChatMessage(role="user", content=f"question {i} " + "about the weather " * 370))
        msgs.append(v1.ChatMessage(role="assistant", content=f"answer {i} " + "it rains " * 370))
    msgs.append(v1.ChatMessage(role="user", content="and now?"))
    return msgs


def test_thousands_of_empty_messages_are_refused_before_any_tokenizing(gated: tuple[DaemonProcess, Path]) -> None:
    """Each message costs at least the chat template's tokens around it: a turn of 4,000
    empty replies cannot fit the tiny model's 8,192 positions, and the front door says so from
    their count alone. Had the request reached the tokenizer, the closed gate (its last
    message holds the marker) would have held it there."""
    daemon, _ = gated
    client = RawClient(daemon.socket)
    try:
        # All in the newest turn, which trimming never drops (older turns it would).
        empty = [v1.ChatMessage(role="assistant", content="")] * 3999
        client.send("many", v1.Generate(messages=[v1.ChatMessage(role="user", content=HOLD_MARKER), *empty]))
        (_, err), = [client.recv(want="many")]
        assert isinstance(err, v1.Error) and err.code == "context_overflow" and err.param == "messages", err
        too_many = [v1.ChatMessage(role="user", content=HOLD_MARKER)] * (v1.MAX_MESSAGES + 1)
        client.send("count", v1.Generate(messages=too_many))
        _, err = client.recv(want="count")
        assert isinstance(err, v1.Error) and (err.code, err.param) == ("invalid_field", "messages"), err
        assert f"at most {v1.MAX_MESSAGES}" in err.message
    finally:
        client.close()


def test_a_short_request_finishes_while_a_huge_one_is_still_tokenizing(gated: tuple[DaemonProcess, Path]) -> None:
    daemon, gate = gated
    hog, other = RawClient(daemon.socket), RawClient(daemon.socket)
    try:
        big = v1.Generate(messages=big_conversation(), sampling=v1.Sampling(max_tokens=2, ignore_eos=True))
        hog.send("big-1", big)
        hog.send("big-2", big)  # the same client's next one waits behind its first
        other.send("small", chat("hi", max_tokens=2, ignore_eos=True))
        frames = list(other.stream("small"))
        assert isinstance(frames[-1], v1.Done) and frames[-1].usage.completion_tokens == 2, frames
        # The hog's requests are still held in the tokenizer: not one frame for them yet
        # (a liveness probe, id "", may have come: the daemon checks on quiet clients).
        while hog.sock.poll(0):
            env, body = hog.sock.recv_multipart()
            assert v1.decode_envelope(env).id == "", v1.decode_daemon_body(body)
        gate.touch()
        for rid in ("big-1", "big-2"):
            done = list(hog.stream(rid))[-1]
            assert isinstance(done, v1.Done), done
            assert done.usage.completion_tokens == 2 and done.trimmed_messages > 0
    finally:
        hog.close()
        other.close()
