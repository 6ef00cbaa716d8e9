"""A model from Ollama's store brings its own defaults, and the daemon applies them to
every request that leaves them out: here seen through Ollama's API with its own client,
against a real store layout (params: temperature 0.6, top_p 0.9, a stop string; a system
prompt)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest
from conftest import DaemonProcess
from ollama_layout import SYSTEM, write_model
from web_bridge import BridgeProcess, started_bridge

pytestmark = pytest.mark.timeout(120)
QUESTION = {"role": "user", "content": "Tell me about the sea"}
LENGTH = {"num_predict": 8, "ignore_eos": True, "seed": 5}


@pytest.fixture(scope="module", name="store_bridge")
def store_bridge_fixture(tmp_path_factory: pytest.TempPathFactory, llamacpp_f32_gguf: Path) -> Iterator[BridgeProcess]:
    root = tmp_path_factory.mktemp("ollama")
    write_model(root, llamacpp_f32_gguf.read_bytes(), ("registry.ollama.ai", "library", "tiny", "latest"))
    daemon = DaemonProcess("ollama:tiny", env={"OLLAMA_MODELS": str(root)}).wait_ready()
    try:
        with started_bridge(daemon.socket) as bridge:
            yield bridge
    finally:
        assert daemon.stop() == 0, daemon.log_text()


def ask(bridge: BridgeProcess, messages: list[dict[str, str]], **options: object) -> ollama.ChatResponse:
    # A client, so a connection and an end user, per question: none reuses another's
    # cached prompt, and each prompt_eval_count is its whole prompt.
    with ollama.Client(host=bridge.url, timeout=60) as client:
        return client.chat(model="tiny", messages=messages, options={**LENGTH, **options})


def test_a_request_that_leaves_them_out_gets_the_models_defaults(store_bridge: BridgeProcess) -> None:
    bare = ask(store_bridge, [QUESTION])
    spelled_out = ask(store_bridge, [{"role": "system", "content": SYSTEM}, QUESTION], temperature=0.6, top_p=0.9)
    assert bare.message.content == spelled_out.message.content
    assert bare.prompt_eval_count == spelled_out.prompt_eval_count
    # Its own (empty) system prompt wins over the model's: fewer tokens in the prompt.
    own_system = ask(store_bridge, [{"role": "system", "content": ""}, QUESTION])
    assert own_system.prompt_eval_count is not None and bare.prompt_eval_count is not None
    assert own_system.prompt_eval_count < bare.prompt_eval_count
    # Its own top_k of 1 makes it greedy; the model's temperature draws from nearly flat
    # logits (random weights), where eight greedy tokens in a row do not come up.
    greedy = ask(store_bridge, [QUESTION], top_k=1)
    assert greedy.message.content != bare.message.content


def test_an_explicit_temperature_of_zero_stays_greedy(store_bridge: BridgeProcess) -> None:
    """Zero is also the protocol's default, which the model's own temperature fills in;
    the bridge keeps the request greedy on both of its APIs."""
    greedy = ask(store_bridge, [QUESTION], top_k=1).message.content
    assert ask(store_bridge, [QUESTION], temperature=0).message.content == greedy
    with store_bridge.openai_client() as client:
        reply = client.chat.completions.create(
            model="ollama:tiny",
            messages=[QUESTION],  # type: ignore[list-item]
            max_tokens=LENGTH["num_predict"],  # type: ignore[arg-type]
            temperature=0,
            extra_body={"ignore_eos": True},
        )
    assert reply.choices[0].message.content == greedy
