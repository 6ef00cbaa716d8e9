"""Nothing a client sends may crash or wedge the daemon: each bad frame gets a typed
error naming the problem, and the daemon goes on serving."""

from __future__ import annotations

import json

import msgspec
import pytest
from conftest import HELD, DaemonProcess, RawClient, chat

from axchat.protocol import v1

pack = msgspec.msgpack.encode


def env(rid: str = "r", v: int = 1) -> bytes:
    return pack({"id": rid, "v": v})


def expect_error(raw: RawClient, code: str, *needles: str) -> v1.Error:
    _, body = raw.recv()
    assert isinstance(body, v1.Error), body
    assert body.code == code, body
    for needle in needles:
        assert needle in body.message, body.message
    return body


def still_serving(raw: RawClient) -> None:
    raw.send("ok", chat("are you alive?", max_tokens=3, ignore_eos=True))
    frames = list(raw.stream("ok"))
    assert isinstance(frames[-1], v1.Done) and frames[-1].usage.completion_tokens == 3


DEEP = b"\x91" * 100_000 + b"\xc0"  # an array in an array ... 100,000 deep

CASES = [
    pytest.param([b"\xc1\xc1 not msgpack"], "bad_frame", ["expected 2 frames"], None, id="single-garbage-frame"),
    pytest.param([b"\xc1garbage", b"\x00"], "bad_frame", ["envelope"], None, id="garbage-envelope"),
    pytest.param([env(), b"\xc1\xc1"], "bad_frame", ["body", "malformed"], None, id="garbage-body"),
    pytest.param([env(), pack({"type": "make_coffee"})], "unknown_type", ["make_coffee", "$.type"], "type", id="unknown-tag"),
    pytest.param([env(), pack({"no": "tag"})], "invalid_field", ["type"], None, id="missing-tag"),
    pytest.param(
        [env(), pack({"type": "generate", "prompt": "hi", "sampling": {"temperature": "hot"}})],
        "invalid_field",
        ["$.sampling.temperature", "float"],
        "sampling.temperature", id="wrong-field-type",
    ),
    pytest.param(
        [env(), pack({"type": "generate", "messages": [{"role": "robot", "content": "x"}]})],
        "invalid_field",
        ["role"],
        "messages[0].role", id="bad-role",
    ),
    pytest.param([env(v=2), pack({"type": "ping"})], "unsupported_version", ["protocol 1", "version 2"], None, id="envelope-v2"),
    pytest.param([env(), pack({"type": "hello", "protocol": "2.0"})], "unsupported_version", ["2.0"], None, id="hello-v2"),
    pytest.param(
        [env(), pack({"type": "generate", "prompt": "a", "messages": [{"role": "user", "content": "b"}]})],
        "invalid_field",
        ["exactly one"],
        "prompt", id="prompt-and-messages",
    ),
    pytest.param([env(), pack({"type": "generate", "messages": []})], "invalid_field", ["empty"], "messages", id="no-messages"),
    pytest.param(
        [env(), pack({"type": "generate", "prompt": "hi", "sampling": {"top_p": 1.5}})],
        "invalid_field",
        ["top_p"],
        "sampling.top_p", id="top-p-out-of-range",
    ),
    pytest.param(
        [env(), pack({"type": "generate", "prompt": "hi", "model": "gpt-17"})],
        "unknown_model",
        ["gpt-17"],
        "model", id="unknown-model",
    ),
    # Nesting 1,000 (here 100,000) deep in an ignored field, or in the envelope: msgspec's
    # recursion guard fires, and it is the client's bad frame, not an internal error.
    pytest.param(
        [env(), b"\x82\xa4type\xa8generate\xa5extra" + DEEP], "bad_frame", ["nested too deeply"], None, id="deep-body"
    ),
    pytest.param([b"\x82\xa2id\xa1r\xa1x" + DEEP, pack({"type": "ping"})], "bad_frame", ["nested"], None, id="deep-envelope"),
]


@pytest.mark.parametrize("frames,code,needles,param", CASES)
def test_bad_frame_gets_typed_error_and_daemon_serves_on(
    raw: RawClient, frames: list[bytes], code: str, needles: list[str], param: str | None
) -> None:
    raw.send_frames(frames)
    err = expect_error(raw, code, *needles)
    assert err.param == param, err
    still_serving(raw)


def test_a_client_written_from_the_doc_sees_the_offending_field(raw: RawClient) -> None:
    # Plain MessagePack maps, as docs/protocol.md's minimal client reads them: no schema.
    raw.send_frames([env("typed"), pack({"type": "generate", "prompt": "hi", "sampling": {"max_tokens": "many"}})])
    assert raw.sock.poll(10_000), "no reply within 10 s"
    envelope, body = (msgspec.msgpack.decode(f) for f in raw.sock.recv_multipart())
    assert envelope["id"] == "typed"
    assert (body["type"], body["code"], body["param"]) == ("error", "invalid_field", "sampling.max_tokens")


def test_cancel_of_unknown_request_gets_no_reply(raw: RawClient) -> None:
    # A cancel that lost the race with `done` must not produce a second terminal frame.
    raw.send("nope", v1.Cancel())
    raw.send("ping", v1.Ping())
    env, body = raw.recv()
    assert env.id == "ping" and isinstance(body, v1.Pong)


def test_oversized_frame(raw: RawClient) -> None:
    welcome = raw.request(v1.Hello())
    assert isinstance(welcome, v1.Welcome)
    huge = "word " * (welcome.max_frame_bytes // 5 + 100)
    raw.send("big", v1.Generate(prompt=huge))
    err = expect_error(raw, "frame_too_large", str(welcome.max_frame_bytes))
    assert err is not None
    still_serving(raw)


def test_prompt_longer_than_context(raw: RawClient) -> None:
    welcome = raw.request(v1.Hello())
    assert isinstance(welcome, v1.Welcome)
    # Small in bytes, long in tokens: under the frame limit, over the context.
    long_prompt = " ".join(f"w{i}" for i in range(welcome.context_length * 2))
    raw.send("long", v1.Generate(prompt=long_prompt))
    assert expect_error(raw, "context_overflow", str(welcome.context_length)).param == "prompt"
    still_serving(raw)


def test_duplicate_request_id(raw: RawClient) -> None:
    raw.send("dup", chat("first", **HELD))
    raw.send("dup", chat("second", max_tokens=5))
    errors, frames = [], []
    for _ in range(200):
        _, body = raw.recv()
        if isinstance(body, v1.Error):
            errors.append(body)
            break
        frames.append(body)
    assert errors and errors[0].code == "duplicate_request"
    raw.send("dup", v1.Cancel())
    done = list(raw.stream("dup"))[-1]
    assert isinstance(done, v1.Done) and done.finish_reason == "cancelled"
    still_serving(raw)


def test_hello_reports_model(raw: RawClient, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    welcome = raw.request(v1.Hello())
    assert isinstance(welcome, v1.Welcome)
    assert welcome.protocol == v1.PROTOCOL_VERSION
    assert welcome.model == tiny_model_dir.name
    # The CPU default for a Llama-family model, with no flags: llama.cpp, q8_0 weights.
    assert (welcome.backend, welcome.device, welcome.dtype) == ("llamacpp", "cpu", "q8_0")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert welcome.context_length == config["max_position_embeddings"]
    assert isinstance(raw.request(v1.Ping()), v1.Pong)


def test_client_strings_are_cut_short_in_logs_and_errors(raw: RawClient, daemon: DaemonProcess) -> None:
    huge_type = "x" * 1_000_000
    raw.send_frames([env("q" * 100_000), pack({"type": huge_type})])
    err = expect_error(raw, "invalid_field", "the request id is 100000 characters; the limit is 128")
    assert err.param == "id" and len(err.message) < 1000
    raw.send_frames([env("q" * v1.MAX_ID_CHARS), pack({"type": huge_type})])
    err = expect_error(raw, "unknown_type")
    assert len(err.message) < 1000
    still_serving(raw)
    logged_after(raw, daemon, "cut-marker")
    assert not any(len(line) > 2000 for line in daemon.lines)


def logged_after(client: RawClient, daemon: DaemonProcess, marker: str) -> None:
    """Wait until the daemon logged a rejection of `marker`: every line before it is in."""
    client.send_frames([env(marker), pack({"type": "make_tea"})])
    expect_error(client, "unknown_type")
    daemon.wait_for_line(f"'{marker}'", timeout_s=30)


def test_each_connection_has_its_own_label_in_logs(raw: RawClient, daemon: DaemonProcess) -> None:
    other = RawClient(daemon.socket)
    try:
        for client, rid in ((raw, "label-a"), (other, "label-b")):
            client.send_frames([env(rid), pack({"type": "make_tea"})])
            expect_error(client, "unknown_type")
    finally:
        other.close()
    logged_after(raw, daemon, "label-marker")
    labels = {line.split("peer ")[1].split()[0] for line in daemon.lines if "'label-" in line}
    assert len(labels) == 2, labels
