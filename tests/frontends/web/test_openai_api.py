"""The official openai client against a real bridge and daemon: the API as clients see it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from web_bridge import BridgeProcess, bridge_fixture, client_fixture, model_name_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def test_models_lists_the_daemons_model(client: openai.OpenAI, model_name: str) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [model_name]
    assert client.models.retrieve(model_name).id == model_name


def test_chat_completion_whole(client: openai.OpenAI, model_name: str) -> None:
    reply = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "hello"}], max_tokens=7, extra_body={"ignore_eos": True}
    )
    assert reply.object == "chat.completion" and reply.model == model_name
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 7 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7


def test_chat_stream_matches_whole_and_ends_with_usage(client: openai.OpenAI, model_name: str) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "count"},
    ]
    whole = client.chat.completions.create(model=model_name, messages=messages, max_tokens=9)
    chunks = list(
        client.chat.completions.create(
            model=model_name,
            messages=messages,
            max_tokens=9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer either way
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_completions_raw_prompt(client: openai.OpenAI, model_name: str) -> None:
    whole = client.completions.create(
        model=model_name, prompt="Once upon", max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 6
    streamed = client.completions.create(
        model=model_name, prompt="Once upon", max_tokens=6, stream=True, extra_body={"ignore_eos": True}
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


def test_sampling_fields_reach_the_daemon(client: openai.OpenAI, model_name: str) -> None:
    def ask(**kw: object) -> str:
        reply = client.chat.completions.create(
            model=model_name,
            messages=[{"role": "user", "content": "go"}],
            max_tokens=12,
            **kw,  # type: ignore[call-overload]
        )
        return str(reply.choices[0].message.content)

    seeded = ask(temperature=1.5, seed=7, extra_body={"ignore_eos": True})
    assert seeded == ask(temperature=1.5, seed=7, extra_body={"ignore_eos": True})
    greedy = ask(extra_body={"ignore_eos": True})
    assert greedy == ask(temperature=0, extra_body={"ignore_eos": True})  # absent temperature is greedy
    cut = greedy[3:5]
    stopped = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "go"}], max_tokens=12, stop=cut
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == greedy[: greedy.index(cut)]


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_out_of_range_field_is_400_naming_it(client: openai.OpenAI, model_name: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "hi"}], temperature=-1)
    assert caught.value.code == "invalid_value" and caught.value.param == "temperature"


def test_wrong_type_and_bad_json_are_400(bridge: BridgeProcess) -> None:
    status, body, _ = post(
        bridge.url + "v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}'
    )
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body, _ = post(bridge.url + "v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body, _ = post(bridge.url + "v1/chat/completions", b'{"messages": []}')
    assert status == 400 and body["error"]["param"] == "messages"


def test_health_ready_and_unknown_route(bridge: BridgeProcess) -> None:
    assert get(bridge.url + "health")[0] == 200
    status, body, _ = get(bridge.url + "ready")
    assert status == 200 and body["status"] == "ready"
    status, body, _ = get(bridge.url + "v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_metrics_count_what_was_served(client: openai.OpenAI, bridge: BridgeProcess, model_name: str) -> None:
    client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=3, extra_body={"ignore_eos": True}
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with urllib.request.urlopen(bridge.url + "metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = parse_prometheus(resp.read().decode())
    assert samples['axchat_web_requests_total{endpoint="chat.completions",outcome="length"}'] >= 1
    assert samples['axchat_web_requests_total{endpoint="chat.completions",outcome="unknown_model"}'] >= 1
    assert samples["axchat_web_completion_tokens_total"] >= 3
    assert samples["axchat_web_time_to_first_token_seconds_count"] >= 1
    assert (
        samples['axchat_web_time_to_first_token_seconds_bucket{le="+Inf"}']
        == samples["axchat_web_time_to_first_token_seconds_count"]
    )
    assert samples["axchat_web_inter_token_latency_seconds_count"] >= 2
    assert samples["axchat_daemon_up"] == 1 and samples["axchat_daemon_running_requests"] == 0
    assert "axchat_web_prefix_cache_hit_tokens_total" in samples


# ---------------------------------------------------------------- plain HTTP helpers


def parse_prometheus(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:  # type: ignore[type-arg]
    return _call(urllib.request.Request(url, headers=headers or {}))


def post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:  # type: ignore[type-arg]
    return _call(
        urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    )


def _call(req: urllib.request.Request) -> tuple[int, dict, dict[str, str]]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)
