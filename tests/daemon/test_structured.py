"""Constrained replies through the real daemon (default path: llama.cpp, q8_0) on the
random-weight test model, which knows nothing of JSON: only the constraint makes its
replies valid. Every reply is checked with `jsonschema`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from conftest import HELD, DaemonProcess, RawClient, chat, connected

from axchat.protocol import v1

# Strings, numbers and arrays are bounded (and objects closed): a random model never
# chooses to end a string or a fraction's digits, so an unbounded one runs to max_tokens. Bounds are what a schema
# author gives when the reply must fit a budget.
SCHEMAS: list[dict[str, object]] = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 130}}, "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}}, "required": ["color", "ok"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 1, "maxItems": 4},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10}, "y": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["x", "y"], "additionalProperties": False}}, "required": ["point"], "additionalProperties": False},
    {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 99}, {"type": "string", "enum": ["none", "many"]}]},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"}, "mail": {"type": "string", "format": "email", "maxLength": 24}}, "required": ["when", "mail"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}, "count": {"type": "integer", "minimum": 10, "maximum": 20}}, "required": ["tags", "count"], "additionalProperties": False},
    {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}, "uuid": {"type": "string", "format": "uuid"}}, "required": ["id", "uuid"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {"sku": {"type": "string", "maxLength": 6}, "qty": {"type": "integer", "minimum": 1, "maximum": 3}}, "required": ["sku", "qty"], "additionalProperties": False}}}, "required": ["items"], "additionalProperties": False},
    {"type": "object", "properties": {"kind": {"const": "event"}, "at": {"type": "string", "format": "ipv4"}, "level": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 0, "maximum": 3}]}}, "required": ["kind", "at", "level"], "additionalProperties": False},
]
MAX_TOKENS = 400
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def constrained(text: str, schema: dict[str, object], **sampling: object) -> v1.Generate:
    gen = chat(text, **{"max_tokens": MAX_TOKENS, **sampling})
    gen.constraint = v1.Constraint(kind="json_schema", schema=json.dumps(schema))
    return gen


def reply(raw: RawClient, gen: v1.Generate) -> tuple[str, v1.Done]:
    rid = uuid.uuid4().hex[:8]
    raw.send(rid, gen)
    text = ""
    for frame in raw.stream(rid, timeout_s=120):
        if isinstance(frame, v1.Delta):
            text += frame.text
        elif isinstance(frame, v1.Done):
            return text, frame
        elif isinstance(frame, v1.Error):
            raise AssertionError(f"refused: {frame}")
    raise AssertionError("no done")


def test_hundred_constrained_replies_across_ten_schemas_all_validate(raw: RawClient) -> None:
    """Ten prompts per schema, greedy and sampled, sent five at a time so they share
    batches (a connection may have 8 live requests)."""
    for k, i0 in [(k, i0) for k in range(len(SCHEMAS)) for i0 in (0, 5)]:
        schema, sent = SCHEMAS[k], {}
        for i in range(i0, i0 + 5):
            sampling = {} if i % 2 == 0 else {"temperature": 1.0, "seed": i}
            rid = f"s{k}-{i}"
            raw.send(rid, constrained(f"give me data {i} {k}", schema, **sampling))
            sent[rid] = schema
        for rid, sch in sent.items():
            text, last = "", None
            for last in raw.stream(rid, timeout_s=120):
                if isinstance(last, v1.Delta):
                    text += last.text
            assert isinstance(last, v1.Done) and last.finish_reason == "stop", (rid, last, text)
            jsonschema.validate(json.loads(text), sch, format_checker=FORMATS)


def test_bad_schema_is_refused_up_front_naming_the_field(raw: RawClient) -> None:
    gen = chat("hi")
    gen.constraint = v1.Constraint(kind="json_schema", schema="{not json")
    err = raw.request(gen)
    assert isinstance(err, v1.Error) and err.code == "invalid_field" and err.param == "constraint.schema"
    gen.constraint = v1.Constraint(kind="json_schema", schema=json.dumps({"type": "object", "properties": {"a": {"type": "frobnicate"}}}))
    err = raw.request(gen)
    assert isinstance(err, v1.Error) and err.param == "constraint.schema", err


def test_bad_tool_parameters_name_the_tool(raw: RawClient) -> None:
    gen = chat("hi")
    tools = [v1.ToolSpec(name="a", parameters='{"type": "object"}'), v1.ToolSpec(name="b", parameters="[1, 2]")]
    gen.constraint = v1.Constraint(kind="tools", tools=tools, tool_choice="required")
    err = raw.request(gen)
    assert isinstance(err, v1.Error) and err.param == "constraint.tools[1].parameters", err
    gen.constraint = v1.Constraint(kind="tools", tools=tools[:1], tool_choice="nope")
    err = raw.request(gen)
    assert isinstance(err, v1.Error) and err.param == "constraint.tool_choice", err


def test_hostile_schemas_get_a_clear_end_and_others_are_served(raw: RawClient) -> None:
    """A schema nested past what a request may compile is refused up front, naming the
    field; one whose lexer would explode (2^41 states, built as needed) runs bounded by
    the per-token limits and ends; a free request sent behind both is served."""
    nested = json.loads('{"type": "array", "items": ' * 200 + '{"type": "integer"}' + "}" * 200)
    raw.send("nested", constrained("x", nested))
    raw.send("explode", constrained("x", {"type": "string", "pattern": "^(a|b)*a(a|b){40}$"}, max_tokens=64))
    _, free = reply(raw, chat("hello", max_tokens=8))
    assert free.finish_reason in ("stop", "length")
    refused = list(raw.stream("nested", timeout_s=60))[-1]
    assert isinstance(refused, v1.Error) and refused.code == "invalid_field" and refused.param == "constraint.schema", refused
    ended = list(raw.stream("explode", timeout_s=60))[-1]
    assert isinstance(ended, v1.Done) and ended.finish_reason in ("stop", "length", "error"), ended
    if ended.finish_reason == "error":
        assert ended.error is not None and ended.error.code == "constraint_failed"


def test_tool_calls_name_only_listed_functions_with_valid_arguments(raw: RawClient) -> None:
    params = {
        "get_weather": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city", "days"], "additionalProperties": False},
        "add": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a", "b"], "additionalProperties": False},
    }
    tools = [v1.ToolSpec(name=n, parameters=json.dumps(p)) for n, p in params.items()]
    for choice in ("required", "add", "get_weather"):
        for i in range(3):
            gen = chat(f"call something {i}", max_tokens=MAX_TOKENS, **({"temperature": 1.0, "seed": i} if i else {}))
            gen.constraint = v1.Constraint(kind="tools", tools=tools, tool_choice=choice, parallel_tool_calls=i == 2)
            text, done = reply(raw, gen)
            assert done.finish_reason == "stop" and done.tool_calls, (choice, i, text, done)
            assert text.strip() == ""  # the calls' text is not part of the reply's text
            for call in done.tool_calls:
                assert call.name in params and (choice == "required" or call.name == choice)
                jsonschema.validate(json.loads(call.arguments), params[call.name])
            assert len({c.id for c in done.tool_calls}) == len(done.tool_calls)


def test_tool_calls_stream_in_deltas_that_join_into_the_done_list(raw: RawClient) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "n": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["city", "n"], "additionalProperties": False}
    tools = [v1.ToolSpec(name="lookup", parameters=json.dumps(schema)), v1.ToolSpec(name="other", parameters=json.dumps(schema))]
    for i in range(3):
        gen = chat(f"look something up {i}", max_tokens=MAX_TOKENS, **({"temperature": 1.0, "seed": i} if i else {}))
        gen.constraint = v1.Constraint(kind="tools", tools=tools, tool_choice="required", parallel_tool_calls=True)
        raw.send(f"pieces{i}", gen)
        events = list(raw.stream(f"pieces{i}"))
        done = events[-1]
        assert isinstance(done, v1.Done) and done.finish_reason == "stop" and done.tool_calls, done
        joined: dict[int, list[str]] = {}
        for event in events[:-1]:
            for piece in event.tool_calls if isinstance(event, v1.Delta) else []:
                entry = joined.setdefault(piece.index, ["", "", ""])
                assert not (piece.name and entry[1]), "a call is named in its first piece only"
                entry[0], entry[1], entry[2] = entry[0] + piece.id, entry[1] + piece.name, entry[2] + piece.arguments
        assert [tuple(joined[i]) for i in sorted(joined)] == [(c.id, c.name, c.arguments) for c in done.tool_calls]


def test_tool_choice_auto_answers_in_text_or_valid_calls(raw: RawClient) -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 8}}, "required": ["q"], "additionalProperties": False}
    tools = [v1.ToolSpec(name="search", parameters=json.dumps(schema))]
    for i in range(4):
        gen = chat(f"anything {i}", max_tokens=60, temperature=1.0, seed=i)
        gen.constraint = v1.Constraint(kind="tools", tools=tools, tool_choice="auto")
        text, done = reply(raw, gen)
        assert "<tool_call>" not in text
        for call in done.tool_calls:
            assert call.name == "search"
            jsonschema.validate(json.loads(call.arguments), schema)


def test_constrained_and_free_requests_share_the_device(raw: RawClient) -> None:
    """A long constrained stream (held: paced by the test daemon, still running until
    cancelled) runs beside free and other constrained requests, which finish meanwhile."""
    held = chat("go on", **HELD)
    held.constraint = v1.Constraint(kind="regex", grammar="[ab]*")
    raw.send("held", held)
    first = next(f for f in raw.stream("held") if isinstance(f, v1.Delta))
    _, free = reply(raw, chat("hello", max_tokens=16))
    assert free.finish_reason in ("stop", "length")
    text, _done = reply(raw, constrained("data", SCHEMAS[1]))
    jsonschema.validate(json.loads(text), SCHEMAS[1])
    status = raw.request(v1.Status())
    assert isinstance(status, v1.StatusReply) and any(r.state == "decode" for r in status.requests)
    raw.send("held", v1.Cancel())
    held_text = first.text
    for frame in raw.stream("held"):
        if isinstance(frame, v1.Delta):
            held_text += frame.text
        last = frame
    assert isinstance(last, v1.Done) and last.finish_reason == "cancelled"
    assert set(held_text) <= {"a", "b"} and held_text


def emulated_card(tmp: Path) -> dict[str, str]:
    return {"AXCHAT_AIPU_EMULATOR_DIR": str(tmp / "card"), "XDG_CACHE_HOME": str(tmp / "cache")}


@pytest.fixture(
    scope="module",
    params=[["--backend", "torch"], ["--device", "aipu", "--aipu-runtime", "emulator"]],
    ids=["torch", "aipu-emulated"],
)
def other_backend(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """The other engines beside the default one: the constraint lives in axchat's token
    choice, so it holds whatever computes the logits (the AIPU is its emulator: no card here)."""
    env = emulated_card(tmp_path_factory.mktemp("card")) if "aipu" in request.param else None
    d = DaemonProcess(tiny_model_dir, *request.param, env=env).wait_ready()
    yield d
    assert d.stop() == 0, d.log_text()


def test_every_backend_keeps_the_constraint(other_backend: DaemonProcess) -> None:
    for raw in connected(other_backend):
        for k in (0, 2, 4, 6):
            for sampling in ({}, {"temperature": 1.0, "seed": k}):
                text, done = reply(raw, constrained(f"data {k}", SCHEMAS[k], **sampling))
                assert done.finish_reason == "stop", (text, done)
                jsonschema.validate(json.loads(text), SCHEMAS[k], format_checker=FORMATS)
