"""Ollama's API on the web bridge, driven by the official `ollama` Python client against
a real `axchat web` in front of a real daemon (the default path: llama.cpp, q8_0)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime

import ollama
import pytest
from web_bridge import API_KEY, BridgeProcess, bridge_fixture, keyed_bridge_fixture, model_name_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)
SHORT = {"num_predict": 6, "ignore_eos": True}


@pytest.fixture(name="oc")
def ollama_client(bridge: BridgeProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=bridge.url, timeout=60)
    yield client
    client.close()


@pytest.fixture(name="other")
def other_client(bridge: BridgeProcess) -> Iterator[ollama.Client]:
    """A second client: its own connection, so its own end user to the daemon, whose
    prompt is prefilled afresh rather than restored from the first one's prefix cache
    (on q8_0 weights the two may differ in the last bits, and so in a draw)."""
    client = ollama.Client(host=bridge.url, timeout=60)
    yield client
    client.close()


@pytest.fixture(name="tag")
def listed_model(oc: ollama.Client) -> str:
    models = oc.list().models
    assert len(models) == 1 and models[0].model
    return models[0].model


def test_list_names_the_served_model_as_ollama_does(oc: ollama.Client, model_name: str) -> None:
    (model,) = oc.list().models
    assert model.model == f"{model_name}:latest" and model.details is not None
    assert model.details.format == "gguf" and model.details.quantization_level == "Q8_0"
    assert isinstance(model.modified_at, datetime) and model.digest and len(model.digest) == 64


def test_chat_whole_and_streamed_agree_with_timings_in_nanoseconds(
    oc: ollama.Client, other: ollama.Client, tag: str
) -> None:
    messages = [{"role": "user", "content": "Tell me about the sea"}]
    whole = oc.chat(model=tag, messages=messages, options=SHORT)
    assert whole.done and whole.done_reason == "length" and whole.message.role == "assistant"
    assert whole.eval_count == 6 and whole.prompt_eval_count is not None and whole.prompt_eval_count > 0
    assert whole.total_duration is not None and whole.eval_duration is not None
    # Nanoseconds: the whole request takes longer than its decode, and than a microsecond.
    assert whole.total_duration > whole.eval_duration and whole.total_duration > 1_000
    parts = list(other.chat(model=tag, messages=messages, options=SHORT, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "length"
    assert "".join(p.message.content or "" for p in parts) == whole.message.content  # greedy: the same reply
    assert parts[-1].eval_count == 6


def test_generate_with_a_system_prompt_and_raw(oc: ollama.Client, other: ollama.Client, tag: str) -> None:
    plain = oc.generate(model=tag, prompt="Why is the sky blue?", options=SHORT)
    with_system = oc.generate(model=tag, prompt="Why is the sky blue?", system="Answer in French", options=SHORT)
    raw = oc.generate(model=tag, prompt="Why is the sky blue?", raw=True, options=SHORT)
    assert plain.done_reason == with_system.done_reason == raw.done_reason == "length"
    assert plain.prompt_eval_count is not None and with_system.prompt_eval_count is not None
    # The system prompt is in the prompt; raw text goes in without the chat template.
    counts = {plain.prompt_eval_count, with_system.prompt_eval_count, raw.prompt_eval_count}
    assert len(counts) == 3, counts
    streamed = list(other.generate(model=tag, prompt="Why is the sky blue?", options=SHORT, stream=True))
    assert "".join(p.response or "" for p in streamed) == plain.response and streamed[-1].eval_count == 6


def test_an_empty_request_loads_the_model(oc: ollama.Client, tag: str) -> None:
    loaded = oc.generate(model=tag, keep_alive="5m")
    assert loaded.done and loaded.done_reason == "load"


def test_show_ps_and_version(oc: ollama.Client, tag: str, bridge: BridgeProcess) -> None:
    shown = oc.show(tag)
    assert shown.capabilities == ["completion", "tools"] and shown.details is not None
    assert shown.modelinfo is not None and shown.modelinfo["general.context_length"] > 0
    (running,) = oc.ps().models
    assert running.model == tag and running.context_length == shown.modelinfo["general.context_length"]
    (listed,) = oc.list().models
    assert listed.size and running.size and running.size > listed.size  # weights, and weights + KV
    with urllib.request.urlopen(bridge.url + "api/version", timeout=10) as r:
        assert json.load(r)["version"]
    # Ollama's clients probe `HEAD /` to see whether a server is up.
    with urllib.request.urlopen(urllib.request.Request(bridge.url, method="HEAD"), timeout=10) as r:
        assert r.status == 200


def test_a_model_not_served_is_ollamas_404(oc: ollama.Client, tag: str) -> None:
    for call in (
        lambda: oc.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}]),
        lambda: oc.generate(model="llama3.2:1b", prompt="hi"),
        lambda: oc.show("llama3.2:1b"),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 404 and caught.value.error == "model 'llama3.2:1b' not found"
    with pytest.raises(ollama.ResponseError) as streamed:
        list(oc.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert streamed.value.status_code == 404


def test_errors_are_shaped_as_ollama_shapes_them(oc: ollama.Client, tag: str) -> None:
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        (lambda: oc.chat(model=tag, messages=hi, options={"temperature": -1}), "`options.temperature`"),
        (lambda: oc.chat(model=tag, messages=hi, options={"repeat_penalty": 0}), "`options.repeat_penalty`"),
        (lambda: oc.chat(model=tag, messages=hi, options={"num_ctx": 1 << 30}), "num_ctx"),
        (lambda: oc.chat(model=tag, messages=hi, format={"type": 5}), "format"),
        (lambda: oc.chat(model=tag, messages=[{"role": "wizard", "content": "hi"}]), "unsupported role"),
    ]
    for call, words in cases:
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 400 and words in caught.value.error, caught.value.error
    # The same bridge still serves.
    assert oc.chat(model=tag, messages=hi, options=SHORT).done_reason == "length"


def test_options_reach_the_sampler(oc: ollama.Client, other: ollama.Client, tag: str) -> None:
    hi = [{"role": "user", "content": "Tell me a story"}]
    seeded = {"temperature": 1.5, "top_k": 50, "top_p": 0.95, "min_p": 0.01, "seed": 7, **SHORT}
    first = oc.chat(model=tag, messages=hi, options=seeded)
    again = other.chat(model=tag, messages=hi, options=seeded)
    assert first.message.content == again.message.content  # the seed makes a draw repeatable
    capped = oc.chat(model=tag, messages=hi, options={"num_predict": 3, "ignore_eos": True})
    assert capped.eval_count == 3 and capped.done_reason == "length"


def test_api_keys_apply_as_on_the_openai_routes(keyed_bridge: BridgeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    with ollama.Client(host=keyed_bridge.url, timeout=30) as keyless, pytest.raises(ollama.ResponseError) as caught:
        keyless.list()
    assert caught.value.status_code == 401 and caught.value.error.startswith("missing or wrong API key")
    # Ollama's clients send $OLLAMA_API_KEY as a bearer key.
    monkeypatch.setenv("OLLAMA_API_KEY", API_KEY)
    with ollama.Client(host=keyed_bridge.url, timeout=30) as keyed:
        (model,) = keyed.list().models
        assert model.model is not None
        assert keyed.generate(model=model.model, prompt="hi", options=SHORT).done_reason == "length"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "api/chat", b"", 400),
        ("POST", "api/chat", json.dumps({"model": "m", "messages": [], "format": "yaml"}).encode(), 400),
        ("POST", "api/generate", b"{not json", 400),
        ("POST", "api/chat", json.dumps({"model": "m", "messages": [{"role": "user"}] * 5000}).encode(), 400),
        ("GET", "api/chat", None, 405),
        ("GET", "api/nothing", None, 404),
    ],
)
def test_every_refusal_on_ollamas_routes_has_its_shape(
    bridge: BridgeProcess, method: str, path: str, body: bytes | None, status: int
) -> None:
    request = urllib.request.Request(
        bridge.url + path, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == status
    answer = json.load(caught.value)
    assert list(answer) == ["error"] and isinstance(answer["error"], str) and answer["error"]


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_format_holds_the_reply_to_json_and_to_a_schema(oc: ollama.Client, tag: str) -> None:
    """The random-weight model knows no JSON: only the constraint makes these valid."""
    hi = [{"role": "user", "content": "Who are you?"}]
    anything = oc.chat(model=tag, messages=hi, format="json", options={"num_predict": 30})
    assert anything.message.content.startswith("{")  # an unbounded string may outrun 30 tokens
    if anything.done_reason == "stop":
        assert isinstance(json.loads(anything.message.content), dict)
    person = oc.chat(model=tag, messages=hi, format=PERSON, options={"num_predict": 200})
    reply = json.loads(person.message.content)
    assert set(reply) == {"name", "age"} and 0 <= reply["age"] <= 120 and len(reply["name"]) <= 12
    streamed = "".join(part.message.content for part in oc.chat(model=tag, messages=hi, format=PERSON, stream=True))
    assert set(json.loads(streamed)) == {"name", "age"}
    generated = oc.generate(model=tag, prompt="Who are you?", format=PERSON, options={"num_predict": 200})
    assert set(json.loads(generated.response)) == {"name", "age"}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_are_offered_and_a_tool_turn_is_rendered(
    bridge: BridgeProcess, oc: ollama.Client, other: ollama.Client, tag: str
) -> None:
    """Ollama lets the model choose between text and a call; a random model answers in
    text, and a follow-up with the call and its result reaches the prompt."""
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = oc.chat(model=tag, messages=ask, tools=[WEATHER], options=SHORT)
    assert first.done_reason == "length"
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    turns = [*ask, {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}]  # fmt: skip
    second = other.chat(model=tag, messages=turns, tools=[WEATHER], options=SHORT)  # no prefix of the first cached
    assert second.done_reason == "length" and second.prompt_eval_count > first.prompt_eval_count
    # A schema the client itself would not send: the bridge refuses it before any token.
    bad = {"type": "function", "function": {"name": "x", "parameters": {"type": 5}}}
    body = json.dumps({"model": tag, "messages": ask, "tools": [WEATHER, bad], "stream": False}).encode()
    request = urllib.request.Request(bridge.url + "api/chat", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400 and list(json.load(caught.value)) == ["error"]
