"""The daemon with no --model serves the bundled axchat-mini, says how to get a real
model, and answers "Give me a joke" with a joke from its training corpus, streamed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, RawClient, chat, short_socket_dir
from pyjokes import jokes_en

from axchat.protocol import v1

FORTUNES = Path("/usr/share/games/fortunes/literature")


def sentences(texts: list[str]) -> set[str]:
    """Sentences long enough that finding one in an answer cannot be chance."""
    return {s for t in texts for s in re.split(r"(?<=[.?!])\s+", " ".join(t.split())) if len(s) >= 15}


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    empty = tmp_path_factory.mktemp("cfg") / "config.toml"
    empty.write_text("")  # no /etc or user config may name a model behind the test's back
    d = DaemonProcess(None, env={"AXCHAT_CONFIG": str(empty)}).wait_ready()
    yield d
    assert d.stop() == 0, d.log_text()


@pytest.fixture
def client(mini: DaemonProcess) -> Iterator[RawClient]:
    c = RawClient(mini.socket)
    yield c
    c.close()


def answer(client: RawClient, rid: str, request: v1.Generate) -> list[v1.Delta]:
    client.send(rid, request)
    frames = list(client.stream(rid))
    assert isinstance(frames[-1], v1.Done), frames[-1]
    return [f for f in frames if isinstance(f, v1.Delta)]


def test_default_is_axchat_mini_and_the_log_says_how_to_use_a_real_model(
    mini: DaemonProcess, client: RawClient
) -> None:
    hint = next(line for line in mini.lines if "no --model given" in line)  # logged before "ready:"
    assert "axchat-mini" in hint and "axchat pull" in hint and "--model" in hint
    welcome = client.request(v1.Hello())
    assert isinstance(welcome, v1.Welcome) and welcome.model == "axchat-mini"


def test_give_me_a_joke_streams_a_joke_from_the_corpus(client: RawClient) -> None:
    request = chat("Give me a joke", max_tokens=120)
    request.model = "axchat-mini"  # the bundled name is an accepted alias
    deltas = answer(client, "joke", request)
    text = "".join(d.text for d in deltas)
    # Streamed, not one lump: the first token goes out alone as soon as the prompt is in;
    # the rest follow in pieces (a run of steps on the device thread lasts at most
    # run_ahead.BUDGET_MS, and this model may make the whole answer within one).
    assert len(deltas) >= 2 and len(deltas[0].token_ids) == 1, deltas
    assert any(s in text for s in sentences(jokes_en.neutral)), text


@pytest.mark.skipif(not FORTUNES.is_file(), reason="Debian's fortunes-min (the quote corpus) is not installed")
def test_tell_me_a_quote_is_a_quote_from_the_corpus(client: RawClient) -> None:
    text = "".join(d.text for d in answer(client, "quote", chat("Tell me a quote", max_tokens=120)))
    assert any(s in text for s in sentences(FORTUNES.read_text().split("\n%\n"))), text


@pytest.mark.skipif(not FORTUNES.is_file(), reason="Debian's fortunes-min (the quote corpus) is not installed")
def test_a_three_turn_chat_gets_a_joke_a_quote_then_what_was_asked(client: RawClient) -> None:
    """Each later turn sees the whole history, as `axchat chat` sends it: a joke, then a
    quote (not another joke), then the model recalls the last request."""
    jokes = sentences(jokes_en.neutral)
    quotes = sentences(FORTUNES.read_text().split("\n%\n"))
    messages: list[v1.ChatMessage] = []
    said = []
    for turn, prompt in enumerate(("Give me a joke", "Tell me a quote", "What did I ask?")):
        messages.append(v1.ChatMessage(role="user", content=prompt))
        request = v1.Generate(messages=list(messages), sampling=v1.Sampling(max_tokens=120))
        text = "".join(d.text for d in answer(client, f"turn-{turn}", request))
        messages.append(v1.ChatMessage(role="assistant", content=text))
        said.append(text)
    joke, quote, recall = said
    assert any(s in joke for s in jokes), said
    assert any(s in quote for s in quotes) and not any(s in quote for s in jokes), said
    assert recall.startswith("You asked me") and "quote" in recall and "joke" not in recall, said


def test_serve_check_names_the_default_and_a_pulled_catalog_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`--model` spellings reach the daemon's own checks: none (axchat-mini) and a catalog name."""
    config = tmp_path / "config.toml"
    config.write_text("")
    shutil.copytree(tiny_model_dir, tmp_path / "data" / "axchat" / "models" / "smollm2-135m")  # as if pulled
    env = {**os.environ, "AXCHAT_CONFIG": str(config), "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("AXCHAT_MODEL", None)
    sock_dir = short_socket_dir()
    sock = str(sock_dir / "d.sock")
    for named, expected in (
        ([], "ok: model axchat-mini (llama)"),
        (["--model", "smollm2-135m"], "ok: model smollm2-135m (llama)"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "axchat", "serve", "--check", "--socket", sock, *named],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and expected in proc.stderr, proc.stderr
    shutil.rmtree(sock_dir, ignore_errors=True)
