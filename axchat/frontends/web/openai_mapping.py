"""OpenAI request fields onto protocol v1 `generate`, and daemon replies onto OpenAI's
response objects (`chat.completion`, `chat.completion.chunk`, `text_completion`).

Defaults follow axchat, not OpenAI: an absent `temperature` is 0 (greedy, as `axchat
ask`), an absent `max_tokens` is the daemon's 256. A daemon-side cancel (the daemon
draining) ends the choice with "stop", the closest of OpenAI's finish reasons.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

import msgspec

from axchat.frontends.web.greedy_intent import top_k_for
from axchat.frontends.web.openai_errors import bad_request
from axchat.frontends.web.openai_schema import ChatCompletionRequest, CompletionRequest, InMessage, NamedToolChoice
from axchat.frontends.web.structured import OfferedTool, json_constraint, tools_constraint
from axchat.protocol import v1

# OpenAI's "developer" role is its newer name for "system".
_ROLES: dict[str, Literal["system", "user", "assistant", "tool"]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}

FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}

_encoder = msgspec.json.Encoder()
# Stands for a chunk's text while its envelope is encoded: the id, model and the rest
# come before the text, so a model name holding it could not move where the text goes.
_MARK = "\x00" + uuid.uuid4().hex


def chat_to_generate(req: ChatCompletionRequest) -> v1.Generate:
    if not req.messages:
        raise bad_request("`messages` must not be empty", param="messages")
    messages = [_message(i, m) for i, m in enumerate(req.messages)]
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    generate = v1.Generate(messages=messages, sampling=_sampling(req, max_tokens), model=req.model)
    generate.constraint = _constraint(req)
    return generate


def _constraint(req: ChatCompletionRequest) -> v1.Constraint | None:
    """Tools take precedence over `response_format` (with `tool_choice` "none" they are
    shown to the model and the reply is free text)."""
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice):
        choice = choice.function.name
    elif choice is not None and choice not in ("auto", "none", "required"):
        raise bad_request("`tool_choice` must be auto, none, required or a named function", param="tool_choice")
    if req.tools:
        offered = [OfferedTool(t.function.name, t.function.description, bytes(t.function.parameters)) for t in req.tools]
        parallel = True if req.parallel_tool_calls is None else req.parallel_tool_calls
        return tools_constraint(offered, choice or "auto", parallel)
    if isinstance(choice, str) and choice not in ("auto", "none"):
        raise bad_request("`tool_choice` needs `tools`", param="tool_choice")
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_constraint()
    if fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise bad_request("`json_schema` is required with type json_schema", param="response_format.json_schema")
        return json_constraint(bytes(fmt.json_schema.schema))
    raise bad_request(f"unsupported response_format type {fmt.type!r}", param="response_format.type")


def completion_to_generate(req: CompletionRequest) -> v1.Generate:
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise bad_request("only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    return v1.Generate(prompt=prompt, sampling=_sampling(req, req.max_tokens), model=req.model)


def include_usage(req: ChatCompletionRequest | CompletionRequest) -> bool:
    return req.stream_options is not None and req.stream_options.include_usage


def _message(index: int, msg: InMessage) -> v1.ChatMessage:
    role = _ROLES.get(msg.role)
    if role is None:
        raise bad_request(f"unsupported role {msg.role!r}", param=f"messages[{index}].role")
    content = msg.content
    if isinstance(content, list):
        # Text parts only: the daemon serves text models.
        if any(part.type != "text" for part in content):
            raise bad_request("only text content parts are supported", param=f"messages[{index}].content")
        content = "".join(part.text or "" for part in content)
    calls = [v1.ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in msg.tool_calls or []]
    return v1.ChatMessage(role=role, content=content or "", tool_calls=calls, tool_call_id=msg.tool_call_id or "")


def _sampling(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> v1.Sampling:
    if req.n not in (None, 1):
        raise bad_request("only n=1 is supported", param="n")
    defaults = v1.Sampling()
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    top_k = top_k_for(req.temperature, req.top_k)
    # Range checks are the daemon's (`invalid_field` becomes a 400 naming the field).
    return v1.Sampling(
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        top_k=defaults.top_k if top_k is None else top_k,
        min_p=defaults.min_p if req.min_p is None else req.min_p,
        repetition_penalty=defaults.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
        max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
        seed=req.seed,
        stop=stop,
        ignore_eos=req.ignore_eos,
        given=[name for name, value in _set_by(req, top_k, max_tokens) if value is not None],
    )


def _set_by(req: ChatCompletionRequest | CompletionRequest, top_k: int | None, max_tokens: int | None) -> list[tuple[str, object]]:
    """The sampling fields as the request set them (None: left out)."""
    return [
        ("temperature", req.temperature), ("top_p", req.top_p), ("top_k", top_k), ("min_p", req.min_p),
        ("repetition_penalty", req.repetition_penalty), ("max_tokens", max_tokens), ("seed", req.seed),
        ("stop", req.stop),
    ]  # fmt: skip


def usage_body(usage: v1.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class ResponseShape:
    """The objects of one response, chat or text: same id, model and timestamp on each."""

    def __init__(self, kind: Literal["chat", "text"], model: str) -> None:
        self.kind = kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.model = model
        self.created = int(time.time())
        self._around_text: dict[bool, tuple[bytes, bytes]] = {}

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": None}

    def _choice(
        self, text: str | None, finish_reason: str | None, *, whole: bool, calls: list[v1.ToolCall] | None = None
    ) -> dict[str, Any]:
        if self.kind == "text":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        if whole:
            message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
            if calls:
                message["tool_calls"] = [_call_body(c) for c in calls]
            return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        delta = {} if text is None else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None, with_usage: bool) -> dict[str, Any]:
        body = self._envelope("chat.completion.chunk" if self.kind == "chat" else "text_completion")
        body["choices"] = choices
        if with_usage:
            body["usage"] = usage
        return body

    def first_chunk(self, with_usage: bool) -> dict[str, Any] | None:
        """OpenAI opens a chat stream with the role and empty content; text streams have no opener."""
        if self.kind != "chat":
            return None
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return self._chunk([choice], None, with_usage)

    def text_chunk(self, text: str, with_usage: bool) -> dict[str, Any]:
        return self._chunk([self._choice(text, None, whole=False)], None, with_usage)

    def tool_calls_chunk(self, pieces: list[v1.ToolCallPiece], with_usage: bool) -> dict[str, Any]:
        """Calls as they stream: a call's first piece carries its id, type and name, the
        rest more of its arguments, which the client joins."""
        delta = {"tool_calls": [_piece_body(p) for p in pieces]}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}], None, with_usage)

    def text_chunk_json(self, text: str, with_usage: bool) -> bytes:
        """`text_chunk` as JSON, the hot path of a stream: the envelope around the text
        is encoded once per response, and each piece costs the encoding of its text."""
        around = self._around_text.get(with_usage)
        if around is None:
            whole = _encoder.encode(self.text_chunk(_MARK, with_usage))
            head, mark, tail = whole.partition(_encoder.encode(_MARK))
            assert mark, "the chunk's text is where the envelope holds it"
            around = self._around_text[with_usage] = (head, tail)
        return around[0] + _encoder.encode(text) + around[1]

    def finish_chunk(self, finish_reason: str, with_usage: bool) -> dict[str, Any]:
        return self._chunk([self._choice(None, finish_reason, whole=False)], None, with_usage)

    def usage_chunk(self, usage: v1.Usage) -> dict[str, Any]:
        return self._chunk([], usage_body(usage), True)

    def whole(self, text: str, finish_reason: str, usage: v1.Usage, calls: list[v1.ToolCall] | None = None) -> dict[str, Any]:
        body = self._envelope("chat.completion" if self.kind == "chat" else "text_completion")
        body["choices"] = [self._choice(text, finish_reason, whole=True, calls=calls)]
        body["usage"] = usage_body(usage)
        return body


def finish_reason(done: v1.Done) -> str:
    return "tool_calls" if done.tool_calls and done.finish_reason == "stop" else FINISH_REASONS[done.finish_reason]


def _piece_body(piece: v1.ToolCallPiece) -> dict[str, Any]:
    if piece.name:
        return {"index": piece.index, "id": piece.id, "type": "function", "function": {"name": piece.name, "arguments": piece.arguments}}
    return {"index": piece.index, "function": {"arguments": piece.arguments}}


def _call_body(call: v1.ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
