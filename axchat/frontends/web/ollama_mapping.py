"""Ollama's request fields onto protocol v1 `generate`, and daemon replies onto Ollama's
response objects (NDJSON chunks and the final one with its timings in nanoseconds).

Defaults follow axchat, as on the OpenAI routes: an absent `temperature` is 0 (greedy) and
an absent `num_predict` the daemon's 256, unless the served model brings its own defaults
(an Ollama model's params layer, applied by the daemon); `num_predict` -1 or -2 runs until
the end of the reply or the context.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from axchat.frontends.field_names import with_field_named
from axchat.frontends.web.greedy_intent import top_k_for
from axchat.frontends.web.ollama_schema import ChatBody, GenerateBody, Message, Options, Tool
from axchat.frontends.web.openai_errors import ApiError
from axchat.frontends.web.structured import OfferedTool, api_param, json_constraint, tools_constraint
from axchat.protocol import v1

PREFIX = "ollama:"
DEFAULT_TAG = "latest"
_json = msgspec.json

_ROLES: dict[str, Literal["system", "user", "assistant", "tool"]] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
# The protocol's largest `max_tokens` (docs/protocol.md, "Limits and constants"): the
# reply then ends at its end-of-sequence token or when the context is full.
UNTIL_DONE = 1 << 20
DONE_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}
# Ollama's option names for the daemon's sampling fields, where they differ.
_OPTION_NAMES = {"repetition_penalty": "repeat_penalty", "max_tokens": "num_predict"}


def not_found(model: str) -> ApiError:
    return ApiError(404, f"model '{model}' not found", code="model_not_found")


def listed_name(served: str) -> str:
    """The name Ollama clients see: Ollama's own spelling, with its tag."""
    bare = served.removeprefix(PREFIX)
    return bare if ":" in bare.rsplit("/", 1)[-1] else f"{bare}:{DEFAULT_TAG}"


def is_served(requested: str, served: str) -> bool:
    """Whether an Ollama client's model name means the model the daemon serves: its
    name as the daemon gives it, or as Ollama writes it, with or without `:latest`."""
    return requested == served or listed_name(requested) == listed_name(served)


def digest(served: str) -> str:
    """A stable id for the model where Ollama gives its manifest's digest."""
    return hashlib.sha256(served.encode()).hexdigest()


def structured_output(format: Any, model: str, generate: v1.Generate) -> v1.Generate:
    """`generate` held to `format` (`"json"` or a JSON schema) by the daemon's constraint,
    which judges the schema (a bad one is a 400 before anything is generated)."""
    if format is None or format == "":
        return generate
    if not isinstance(format, (str, dict)) or (isinstance(format, str) and format != "json"):
        raise ApiError(400, 'format must be "json" or a JSON schema (an object)', param="format")
    generate.constraint = json_constraint(format)
    return generate


def _tools_constraint(tools: list[Tool]) -> v1.Constraint:
    """Ollama offers tools as OpenAI does and lets the model choose: text or calls."""
    offered = [OfferedTool(t.function.name, t.function.description, t.function.parameters) for t in tools]
    return tools_constraint(offered, "auto", parallel=True)


# The daemon's names for a bad constraint's fields, as Ollama's clients sent them.
_CONSTRAINT_PARAMS = {"constraint.schema": "format"}
_TOOL_PARAM = "tools[{i}].function.{field}"


def _refuse_unsupported(body: ChatBody | GenerateBody, images: bool) -> None:
    if body.think not in (None, False):
        raise ApiError(400, f'"{body.model}" does not support thinking', param="think")
    if images:
        raise ApiError(400, f'"{body.model}" does not support images: axchat serves text models', param="images")


def chat_to_generate(body: ChatBody, context_length: int) -> v1.Generate:
    _refuse_unsupported(body, any(m.images for m in body.messages))
    messages = [_message(i, m) for i, m in enumerate(body.messages)]
    generate = v1.Generate(messages=messages, sampling=_sampling(body.options, context_length))
    if body.tools:  # tools take precedence over `format`, as on the OpenAI routes
        generate.constraint = _tools_constraint(body.tools)
        return generate
    return structured_output(body.format, body.model, generate)


def generate_to_generate(body: GenerateBody, context_length: int) -> v1.Generate:
    _refuse_unsupported(body, bool(body.images))
    for field, value in (("suffix", body.suffix), ("template", body.template), ("context", body.context)):
        if value:
            raise ApiError(400, f"`{field}` is not supported here; send the conversation to /api/chat", param=field)
    sampling = _sampling(body.options, context_length)
    if body.raw:
        if body.system:
            raise ApiError(400, "raw mode does not support template, system, or context", param="system")
        generate = v1.Generate(prompt=body.prompt, sampling=sampling)
    else:
        messages = [v1.ChatMessage(role="user", content=body.prompt)]
        if body.system:
            messages.insert(0, v1.ChatMessage(role="system", content=body.system))
        generate = v1.Generate(messages=messages, sampling=sampling)
    return structured_output(body.format, body.model, generate)


def _message(index: int, msg: Message) -> v1.ChatMessage:
    role = _ROLES.get(msg.role)
    if role is None:
        raise ApiError(400, f"unsupported role {msg.role!r} in messages[{index}]", param=f"messages[{index}].role")
    calls = [
        v1.ToolCall(id=f"call_{index}_{n}", name=c.function.name, arguments=_json.encode(c.function.arguments).decode())
        for n, c in enumerate(msg.tool_calls or [])
    ]
    return v1.ChatMessage(role=role, content=msg.content, tool_calls=calls)


def _sampling(options: Options | None, context_length: int) -> v1.Sampling:
    opts = options or Options()
    if opts.num_ctx is not None and opts.num_ctx > context_length:
        raise ApiError(
            400,
            f"num_ctx {opts.num_ctx} is more than the {context_length} tokens of context the daemon serves this model "
            "with; leave num_ctx out, or restart the daemon with a larger --context",
            param="options.num_ctx",
        )
    max_tokens = opts.num_predict
    if max_tokens in (-1, -2):  # Ollama's "until it stops" and "until the context is full"
        max_tokens = UNTIL_DONE
    given: dict[str, Any] = {
        "temperature": opts.temperature,
        "top_k": top_k_for(opts.temperature, opts.top_k),
        "top_p": opts.top_p,
        "min_p": opts.min_p,
        "repetition_penalty": opts.repeat_penalty,
        "max_tokens": max_tokens,
        "seed": None if opts.seed is None or opts.seed < 0 else opts.seed,  # Ollama's -1: fresh randomness
        "stop": opts.stop,
    }
    # An option left out keeps the protocol's default; range checks are the daemon's
    # (`invalid_field` becomes a 400 naming the option).
    own = {k: v for k, v in given.items() if v is not None}
    if opts.seed is not None:  # -1 ("fresh randomness") is a choice too: not the model's seed
        own.setdefault("seed", None)
    return v1.Sampling(**own, ignore_eos=opts.ignore_eos, given=sorted(own))  # type: ignore[arg-type]


def in_ollama_words(exc: ApiError, requested: str) -> ApiError:
    """A refusal as an Ollama client expects it: its 404 wording for a model not served,
    and options by Ollama's names."""
    if exc.code == "model_not_found":
        return not_found(requested)
    if exc.param is not None and exc.param.startswith("constraint."):
        exc.param = api_param(exc.param, _CONSTRAINT_PARAMS, _TOOL_PARAM)
        return exc
    if exc.code == "invalid_value" and exc.param is not None and "." not in exc.param:
        name = f"options.{_OPTION_NAMES.get(exc.param, exc.param)}"
        exc.message = with_field_named(exc.message, f"`{exc.param}`", f"`{name}`")
        exc.param = name
    return exc


def iso_time(unix_s: float | None = None) -> str:
    """A time as Ollama writes it (RFC 3339, UTC); now by default."""
    at = datetime.now(UTC) if unix_s is None else datetime.fromtimestamp(unix_s, UTC)
    return at.isoformat().replace("+00:00", "Z")


class ResponseShape:
    """The objects of one response: chat (`message`) or generate (`response`)."""

    def __init__(self, kind: Literal["chat", "generate"], model: str, started_ns: int) -> None:
        self.kind = kind
        self.model = model
        self.started_ns = started_ns

    def chunk(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "created_at": iso_time()}
        if self.kind == "chat":
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["response"] = text
        body["done"] = False
        return body

    def final(self, text: str, done: v1.Done, now_ns: int) -> dict[str, Any]:
        body = self.chunk(text)
        if self.kind == "chat" and done.tool_calls:
            body["message"]["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _json.decode(c.arguments)}} for c in done.tool_calls
            ]
        stats = done.stats
        prefill_ns = int(stats.prefill_ms * 1e6)
        body.update(
            done=True,
            done_reason=DONE_REASONS.get(done.finish_reason, done.finish_reason),
            total_duration=now_ns - self.started_ns,
            # What Ollama counts as loading is the wait before the request can run.
            load_duration=int((stats.tokenize_ms + stats.queue_ms) * 1e6),
            prompt_eval_count=done.usage.prompt_tokens - done.usage.cached_tokens,
            prompt_eval_duration=prefill_ns,
            eval_count=done.usage.completion_tokens,
            eval_duration=max(0, int(stats.generate_ms * 1e6) - prefill_ns),
        )
        return body

    def loaded(self) -> dict[str, Any]:
        """Ollama's answer to a request with nothing to generate: the model is ready."""
        body = self.chunk("")
        body.update(done=True, done_reason="load")
        return body
