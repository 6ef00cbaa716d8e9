"""The request bodies of OpenAI's chat and text completion APIs, as typed msgspec structs.

Only the fields the bridge maps are declared; unknown ones are ignored, as OpenAI-style
servers commonly do, so clients that send `logit_bias` still work. A body of
the wrong shape is a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, TypeVar, Union

import msgspec

from axchat.frontends.web.openai_errors import bad_request
from axchat.protocol import v1
from axchat.protocol.field_path import field_path


class ContentPart(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    text: str | None = None


class InMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: Union[str, list[ContentPart], None] = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=False):
    include_usage: bool = False


class _Common(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    # Extensions, named as vLLM names them; the daemon's sampler has them anyway.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    user: str | None = None  # OpenAI's end-user id: the daemon's per-user limits and cache


class ChatCompletionRequest(_Common, kw_only=True):
    # The daemon's own bound, checked as the body is decoded: an 8 MiB body of empty
    # messages is refused here, before half a million of them are mapped and encoded.
    messages: Annotated[list[InMessage], msgspec.Meta(max_length=v1.MAX_MESSAGES)]
    max_completion_tokens: int | None = None


class CompletionRequest(_Common, kw_only=True):
    prompt: Union[str, list[str]]


Body = TypeVar("Body", ChatCompletionRequest, CompletionRequest)


def decode_body(raw: bytes, kind: type[Body]) -> Body:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request body: {exc}", param=field_path(exc)) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
