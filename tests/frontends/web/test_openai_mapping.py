"""The OpenAI <-> protocol mapping on its own: request fields, error statuses."""

from __future__ import annotations

import msgspec
import pytest

from axchat.frontends.web import openai_mapping as mapping
from axchat.frontends.web.openai_errors import ApiError, from_daemon, from_error
from axchat.frontends.web.openai_schema import ChatCompletionRequest, CompletionRequest, decode_body
from axchat.protocol import v1


def chat(**fields: object) -> ChatCompletionRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return decode_body(msgspec.json.encode(body), ChatCompletionRequest)


def test_defaults_are_axchats() -> None:
    gen = mapping.chat_to_generate(chat())
    assert gen.sampling == v1.Sampling() and gen.model is None


def test_fields_map_onto_sampling() -> None:
    gen = mapping.chat_to_generate(
        chat(temperature=0.7, top_p=0.9, max_tokens=5, max_completion_tokens=9, stop="END", seed=3, model="m")
    )
    s = gen.sampling
    assert (s.temperature, s.top_p, s.max_tokens, s.stop, s.seed) == (0.7, 0.9, 9, ["END"], 3)
    assert gen.model == "m"
    assert set(s.given) == {"temperature", "top_p", "max_tokens", "stop", "seed"}


def test_a_value_at_the_protocols_default_is_still_given() -> None:
    """So that a model's own defaults (an Ollama model's params) do not replace it."""
    s = mapping.chat_to_generate(chat(top_p=1.0, stop=[])).sampling
    assert s.top_p == 1.0 and s.stop == [] and set(s.given) == {"top_p", "stop"}


def test_messages_roles_and_content_parts() -> None:
    gen = mapping.chat_to_generate(
        chat(
            messages=[
                {"role": "developer", "content": "rules"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
            ]
        )
    )
    assert gen.messages == [
        v1.ChatMessage(role="system", content="rules"),
        v1.ChatMessage(role="user", content="ab"),
        v1.ChatMessage(role="assistant", content=""),
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ],
)
def test_unsupported_requests_are_400(fields: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        mapping.chat_to_generate(chat(**fields))
    assert caught.value.status == 400 and caught.value.param == param


def test_completion_prompt_list_of_one() -> None:
    req = decode_body(b'{"prompt": ["once"]}', CompletionRequest)
    assert mapping.completion_to_generate(req).prompt == "once"


@pytest.mark.parametrize(
    ("code", "status", "retry_after"),
    [
        ("invalid_field", 400, None),
        ("context_overflow", 400, None),
        ("unknown_model", 404, None),
        ("busy", 429, "2"),
        ("shutting_down", 503, "5"),
        ("internal", 500, None),
        ("duplicate_request", 500, None),
    ],
)
def test_daemon_codes_to_http(code: v1.ErrorCode, status: int, retry_after: str | None) -> None:
    error = from_daemon(code, "x", 1.2 if code == "busy" else None)
    assert error.status == status
    assert error.headers().get("Retry-After") == retry_after
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_daemon_field_errors_name_the_api_parameter() -> None:
    error = from_error(
        v1.Error(
            code="invalid_field", message="sampling.max_tokens must be an integer >= 1, got 0", param="sampling.max_tokens"
        )
    )
    assert error.param == "max_tokens" and error.message == "`max_tokens` must be an integer >= 1, got 0"
    assert "sampling." not in error.message


def test_the_parameter_comes_from_the_daemons_field_not_its_text() -> None:
    # A sentence that merely mentions a sampling field names no parameter...
    vague = from_daemon("invalid_field", "sampling.top_k is fine but something else is not")
    assert vague.param is None and vague.message == "sampling.top_k is fine but something else is not"
    # ...and a field outside `sampling` passes through as OpenAI names it.
    role = from_error(v1.Error(code="invalid_field", message="bad role", param="messages[0].role"))
    assert (role.status, role.param) == (400, "messages[0].role")
    # An old daemon (protocol < 1.3) sends no param: the answer is still a 400.
    old = from_error(v1.Error(code="invalid_field", message="sampling.top_p must be in (0, 1], got 2"))
    assert (old.status, old.code, old.param) == (400, "invalid_value", None)


@pytest.mark.parametrize("kind", ["chat", "text"])
@pytest.mark.parametrize("with_usage", [False, True])
def test_a_streamed_text_chunk_encodes_as_its_object_whatever_the_text_or_model(kind: str, with_usage: bool) -> None:
    """The stream's chunks are encoded from a per-response envelope; each must be the
    very JSON of the chunk object, quotes, control characters and all."""
    shape = mapping.ResponseShape(kind, 'a "model"\x00 named\nstrangely')  # type: ignore[arg-type]
    for text in ["hi", "", 'a "quote"\n\x00\u2028', "é 😀"]:
        encoded = shape.text_chunk_json(text, with_usage)
        assert encoded == msgspec.json.encode(shape.text_chunk(text, with_usage))
        assert msgspec.json.decode(encoded) == shape.text_chunk(text, with_usage)
