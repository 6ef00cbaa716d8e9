"""The request bodies of Ollama's API (`/api/chat`, `/api/generate`, `/api/show`) as typed
msgspec structs. Only what the bridge maps or refuses is declared; other fields are
ignored, as Ollama ignores what a model does not use. A body of the wrong shape is a 400
naming the field."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, Union

import msgspec

from axchat.frontends.web.openai_errors import ApiError
from axchat.protocol import v1


class Options(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    num_predict: int | None = None
    stop: list[str] | None = None
    num_ctx: int | None = None
    # An axchat extension, as on the OpenAI routes: exact reply lengths for benchmarks.
    ignore_eos: bool = False


class CallFunction(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)  # Ollama sends an object, not JSON text


class ToolCall(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    function: CallFunction


class Message(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn's calls, sent back with the results
    tool_name: str | None = None  # a `tool` turn: which function's result it holds


class ToolFunction(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    name: str
    description: str = ""
    parameters: Any = None  # a JSON schema, judged by the daemon


class Tool(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    type: str = "function"
    function: ToolFunction


class _Common(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    model: str = ""
    stream: bool = True
    options: Options | None = None
    # "json", a JSON schema, or absent: kept undecoded for the one function that judges it.
    format: Any = None
    keep_alive: Union[str, float, None] = None  # accepted: the daemon's --keep-alive rules
    think: Union[bool, str, None] = None


class ChatBody(_Common, kw_only=True):
    # The daemon's own bound, checked as the body is decoded: an 8 MiB body of empty
    # messages is refused before half a million of them are built.
    messages: Annotated[list[Message], msgspec.Meta(max_length=v1.MAX_MESSAGES)] = msgspec.field(default_factory=list)
    tools: list[Tool] | None = None


class GenerateBody(_Common, kw_only=True):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None


class ShowBody(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    model: str = ""
    name: str = ""  # Ollama's older spelling of `model`


Body = TypeVar("Body", ChatBody, GenerateBody, ShowBody)


def decode_body(raw: bytes, kind: type[Body]) -> Body:
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ApiError(400, f"invalid request body: {exc}") from None
