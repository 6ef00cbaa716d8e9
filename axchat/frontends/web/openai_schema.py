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


class FunctionCall(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    arguments: str = "{}"


class InToolCall(msgspec.Struct, forbid_unknown_fields=False):
    id: str
    function: FunctionCall
    type: str = "function"


class InMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: Union[str, list[ContentPart], None] = None
    tool_calls: list[InToolCall] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool message: the call it answers


class JsonSchemaFormat(msgspec.Struct, forbid_unknown_fields=False):
    name: str = ""
    # Raw: the schema's JSON text as the client sent it, passed on without a rebuild.
    schema: msgspec.Raw = msgspec.Raw(b"{}")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    json_schema: JsonSchemaFormat | None = None


class FunctionDef(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    description: str = ""
    parameters: msgspec.Raw = msgspec.Raw(b"{}")
    strict: bool | None = None


class Tool(msgspec.Struct, forbid_unknown_fields=False):
    function: FunctionDef
    type: str = "function"


class NamedFunction(msgspec.Struct, forbid_unknown_fields=False):
    name: str


class NamedToolChoice(msgspec.Struct, forbid_unknown_fields=False):
    function: NamedFunction
    type: str = "function"


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
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], msgspec.Meta(max_length=v1.MAX_TOOLS)] | None = None
    tool_choice: Union[str, NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None


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
