"""Protocol 1.3: `error.param` names the offending field, and peers of either side of the
bump still understand each other; the field path comes from msgspec's error by one rule."""

from __future__ import annotations

from typing import Literal

import msgspec
import pytest

from axchat.protocol import v1
from axchat.protocol.field_path import field_path

pack = msgspec.msgpack.encode


class ErrorV12(msgspec.Struct, tag="error", tag_field="type"):
    """`error` exactly as a protocol 1.2 peer declares it: no `param`."""

    code: str
    message: str
    retry_after_s: float | None = None


def test_an_error_from_an_older_daemon_decodes_without_param() -> None:
    old = pack({"type": "error", "code": "busy", "message": "full", "retry_after_s": 1.0})
    body = v1.decode_daemon_body(old)
    assert body == v1.Error(code="busy", message="full", retry_after_s=1.0, param=None)


def test_an_error_with_param_round_trips() -> None:
    sent = v1.Error(code="invalid_field", message="sampling.top_p must be in (0, 1]", param="sampling.top_p")
    assert v1.decode_daemon_body(v1.encode_body(sent)) == sent


def test_an_older_client_decodes_an_error_with_param() -> None:
    sent = v1.encode_body(v1.Error(code="invalid_field", message="bad role", param="messages[0].role"))
    assert msgspec.msgpack.decode(sent, type=ErrorV12) == ErrorV12(code="invalid_field", message="bad role")


def test_param_is_omitted_when_there_is_none() -> None:
    # Nothing new on the wire for errors about no one field: byte-identical to 1.2.
    assert v1.encode_body(v1.Error(code="busy", message="full")) == pack({"type": "error", "code": "busy", "message": "full"})


def test_daemon_state_is_a_plain_string_on_the_wire() -> None:
    assert msgspec.msgpack.decode(pack(v1.DaemonState.DRAINING)) == "draining"

    class Reply(msgspec.Struct):
        state: v1.DaemonState

    assert msgspec.msgpack.decode(pack({"state": "serving"}), type=Reply).state is v1.DaemonState.SERVING
    # A 1.2 peer's Literal decodes the enum's bytes.

    class ReplyV12(msgspec.Struct):
        state: Literal["serving", "draining"]

    assert msgspec.msgpack.decode(pack(Reply(v1.DaemonState.DRAINING)), type=ReplyV12).state == "draining"


def _validation_error(body: object) -> msgspec.ValidationError:
    with pytest.raises(msgspec.ValidationError) as caught:
        v1.decode_client_body(pack(body))
    return caught.value


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"type": "make_coffee"}, "type"),
        ({"type": 7}, "type"),
        ({"type": "generate", "sampling": {"max_tokens": 64.0}}, "sampling.max_tokens"),
        ({"type": "generate", "sampling": {"stop": ["a", 3]}}, "sampling.stop[1]"),
        ({"type": "generate", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"type": "generate", "messages": [{"role": "user"}]}, "messages[0]"),  # the map missing `content`
        ({"no": "tag"}, None),  # about the body as a whole
        ([1, 2], None),
        # Text before the path may quote the client, even a fake path: only the end counts.
        ({"type": "x - at `$.sampling.seed`"}, "type"),
    ],
)
def test_field_path_reads_msgspecs_path(body: object, path: str | None) -> None:
    assert field_path(_validation_error(body)) == path
