"""Structured output and tool calls through the official openai SDK, a real bridge and
a real daemon on the random-weight test model: only the constraint makes the replies
valid, so every one is checked."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel, Field
from web_bridge import bridge_fixture, client_fixture, model_name_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(180)


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)
    name: str = Field(max_length=10)


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "get_weather", "description": "the weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


def test_parse_with_a_pydantic_model(client: openai.OpenAI, model_name: str) -> None:
    for seed in range(3):
        completion = client.chat.completions.parse(
            model=model_name,
            messages=[{"role": "user", "content": "describe a pet"}],
            response_format=Pet,
            max_tokens=200,
            temperature=1.0,
            seed=seed,
        )
        pet = completion.choices[0].message.parsed
        assert isinstance(pet, Pet), completion
        assert completion.choices[0].finish_reason == "stop"


def test_json_object_response_format(client: openai.OpenAI, model_name: str) -> None:
    reply = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "json please"}], max_tokens=30,
        response_format={"type": "json_object"},
    )
    text = reply.choices[0].message.content or ""
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_tool_calls_required_whole_and_streamed(client: openai.OpenAI, model_name: str) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "what is 2 + 3?"}]
    whole = client.chat.completions.create(
        model=model_name, messages=messages, tools=TOOLS, tool_choice="required", max_tokens=200
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])

    stream = client.chat.completions.create(
        model=model_name, messages=messages, tools=TOOLS, tool_choice="required", max_tokens=200, stream=True
    )
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        for piece in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += piece.id or ""
            if piece.function is not None:
                entry["name"] += piece.function.name or ""
                entry["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    got = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
    assert got == [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]  # greedy


def test_streamed_tool_calls_reassembled_by_the_sdk(client: openai.OpenAI, model_name: str) -> None:
    with client.chat.completions.stream(
        model=model_name,
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"] * len(calls) and calls
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_two_step_tool_loop(client: openai.OpenAI, model_name: str) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "what is 2 + 3?"}]
    first = client.chat.completions.create(
        model=model_name, messages=messages, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=200, parallel_tool_calls=False,
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    args = json.loads(call.function.arguments)
    messages.append(message.model_dump(exclude_none=True))  # type: ignore[arg-type]
    messages.append({"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])})
    final = client.chat.completions.create(
        model=model_name, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=12
    )
    assert final.choices[0].message.content and final.choices[0].finish_reason in ("stop", "length")
    assert not final.choices[0].message.tool_calls
    # The tools, the call and its result are all in the second prompt.
    assert final.usage is not None and first.usage is not None and final.usage.prompt_tokens > first.usage.prompt_tokens


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
         "response_format.json_schema.schema"),
        ({"tools": [TOOLS[0], TOOLS[1], {"type": "function", "function": {"name": "bad", "parameters": {"type": 5}}}]},
         "tools[2].function.parameters"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
    ],
)
def test_bad_schemas_are_refused_up_front(client: openai.OpenAI, model_name: str, body: dict[str, Any], param: str) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            reply = client.chat.completions.create(
                model=model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=stream, **body
            )
            if stream:
                list(reply)  # type: ignore[arg-type]
        assert caught.value.status_code == 400
        error = caught.value.body
        assert isinstance(error, dict) and error["param"] == param and error["type"] == "invalid_request_error", error
