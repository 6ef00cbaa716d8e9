"""An Ollama model's params and system layers as the daemon's defaults for every request:
each applies where the request has nothing of its own, and a params layer no request
could run with is refused in one line."""

from __future__ import annotations

import pytest
from ollama_layout import PARAMS, SYSTEM

from axchat.daemon.request_defaults import BadDefaults, RequestDefaults
from axchat.protocol import v1

DEFAULTS = RequestDefaults.from_ollama("ollama:tiny:latest", {**PARAMS, "num_ctx": 4096, "mirostat": 0}, SYSTEM)
USER = v1.ChatMessage(role="user", content="hi")


def test_a_bare_request_takes_the_models_settings_and_system_prompt() -> None:
    got = DEFAULTS.apply(v1.Generate(messages=[USER]))
    assert got.messages == [v1.ChatMessage(role="system", content=SYSTEM), USER]
    assert (got.sampling.temperature, got.sampling.top_p, got.sampling.stop) == (0.6, 0.9, ["<|im_end|>"])
    assert got.sampling.max_tokens == v1.Sampling().max_tokens  # not in the params: the protocol's


def test_the_requests_own_values_win() -> None:
    own = v1.Generate(
        messages=[v1.ChatMessage(role="system", content="Answer in French"), USER],
        sampling=v1.Sampling(temperature=0.2, stop=["END"]),
    )
    got = DEFAULTS.apply(own)
    assert got.messages == own.messages and got.sampling.temperature == 0.2 and got.sampling.stop == ["END"]
    assert got.sampling.top_p == 0.9  # what it left out still comes from the model
    raw = DEFAULTS.apply(v1.Generate(prompt="Once upon a time"))
    assert raw.prompt == "Once upon a time" and raw.messages is None  # a raw prompt gets no system prompt


def test_ollamas_special_values_and_a_single_stop_string() -> None:
    defaults = RequestDefaults.from_ollama("m", {"seed": -1, "num_predict": -1, "stop": "###"}, None)
    got = defaults.apply(v1.Generate(messages=[USER]))
    assert got.sampling.seed is None and got.sampling.max_tokens == 1 << 20 and got.sampling.stop == ["###"]
    assert got.messages == [USER]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"temperature": -1}, ": temperature must be"),
        ({"repeat_penalty": 0}, ": repeat_penalty must be"),
        ({"top_k": "forty"}, "top_k"),
        ({"stop": [f"s{i}" for i in range(17)]}, ": stop "),
    ],
)
def test_a_params_layer_no_request_could_use_is_one_line(params: dict[str, object], words: str) -> None:
    with pytest.raises(BadDefaults) as caught:
        RequestDefaults.from_ollama("ollama:odd:latest", params, None)
    line = str(caught.value)
    assert "\n" not in line and line.startswith("ollama:odd:latest: its params layer") and words in line


def test_a_field_the_request_gives_wins_even_at_the_protocols_default() -> None:
    """top_p 1 and no stop strings, said on purpose: `given` tells them from left out."""
    own = v1.Generate(messages=[USER], sampling=v1.Sampling(top_p=1.0, stop=[], given=["stop", "top_p"]))
    got = DEFAULTS.apply(own)
    assert (got.sampling.top_p, got.sampling.stop) == (1.0, [])
    assert got.sampling.temperature == 0.6  # not given: the model's
