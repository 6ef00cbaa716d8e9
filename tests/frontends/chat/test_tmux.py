"""`axchat chat` in a real terminal (tmux, 120x40), as the quick start has a new user
run it: what the screen shows, keys typed into it, /quit ending it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, RawClient, short_socket_dir
from terminal_pane import Pane

from axchat.protocol import v1

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")


@pytest.fixture
def pane_env(tmp_path: Path) -> dict[str, str]:
    keep = ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "HF_HUB_OFFLINE")
    return {k: os.environ[k] for k in keep if k in os.environ} | {"XDG_DATA_HOME": str(tmp_path / "data")}


@pytest.fixture
def panes() -> Iterator[list[Pane]]:
    made: list[Pane] = []
    yield made
    for pane in made:
        pane.close()


def test_chat_in_a_terminal_answers_and_quits(daemon: DaemonProcess, pane_env: dict[str, str], panes: list[Pane]) -> None:
    raw = RawClient(daemon.socket)
    try:
        raw.send("ref", v1.Generate(messages=[v1.ChatMessage(role="user", content="Hello")], sampling=v1.Sampling(max_tokens=3)))
        expected = "".join(e.text for e in raw.stream("ref") if isinstance(e, v1.Delta)).strip()
    finally:
        raw.close()
    pane = Pane([sys.executable, "-m", "axchat", "chat", "--socket", daemon.socket, "--max-tokens", "3"], pane_env)
    panes.append(pane)
    pane.wait(lambda s: "connected:" in s, "the chat to connect")
    pane.keys("Hello", "Enter")
    # The random test model's answer may hold control characters: look for its longest word.
    word = max(("".join(ch for ch in expected if ch.isprintable())).split(), key=len, default="")
    pane.wait(lambda s: "Tokens: " in s and word in s.split("Hello", 1)[-1], f"the answer {expected!r}")
    pane.keys("/quit", "Enter")
    pane.wait(lambda s: s == "", "the chat to end")


def test_no_daemon_message_fits_a_120_column_terminal(pane_env: dict[str, str], panes: list[Pane]) -> None:
    socket = str(short_socket_dir() / "none.sock")
    pane = Pane(
        [sys.executable, "-m", "axchat", "chat", "--no-autostart", "--socket", socket], pane_env
    )
    panes.append(pane)
    # Retries back off to 8 s: from then on the answer to Enter stays up long enough to read.
    screen = pane.wait(lambda s: "retrying in 8s" in s, "the whole no-daemon message, at the backoff's cap")
    assert "axchat serve" in screen
    pane.keys("Hello", "Enter")
    pane.wait(lambda s: "not sent:" in s and "kept in the input" in s, "why Enter sent nothing")
