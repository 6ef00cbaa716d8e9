"""The full-screen chat as a new user meets it: it starts a daemon when none runs (its
progress in the status line), and takes the same commands as --plain, a rejected one
never reaching the model. (The no-daemon message on a real screen: test_tmux.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DaemonProcess, short_socket_dir
from test_app import send, wait_until  # the pilot helpers of the chat's main tests

from axchat.frontends.chat.app import ChatApp
from axchat.frontends.chat.conversation import Conversation, ConversationStore
from axchat.frontends.chat.widgets import PromptInput, StatusLine, UserBubble

START_S = 180.0  # a daemon's start under a loaded CI machine


def make_app(socket: str, tmp_path: Path, **kw: object) -> ChatApp:
    store = ConversationStore(tmp_path / "conversations")
    return ChatApp(socket=socket, conversation=Conversation(), store=store, **kw)  # type: ignore[arg-type]


async def test_commands_and_leave_words_never_reach_the_model(daemon: DaemonProcess, tmp_path: Path) -> None:
    app = make_app(daemon.socket, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_until(pilot, lambda: app.client is not None, "the app to connect")
        status, prompt_input = app.query_one(StatusLine), app.query_one(PromptInput)
        await send(pilot, "/temperature abc")
        assert "needs a number" in status.text and prompt_input.text == ""  # cleared, not kept
        await send(pilot, "/stats")  # so not appended to the rejected one
        assert status.text == "stats hidden"
        await send(pilot, "/bogus")
        assert "unknown command /bogus" in status.text and prompt_input.text == ""
        await send(pilot, "exit")  # the seed's way out, not a prompt
        await wait_until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert app.conversation.turns == [] and not app.query(UserBubble)


async def test_slash_quit_leaves(daemon: DaemonProcess, tmp_path: Path) -> None:
    app = make_app(daemon.socket, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await send(pilot, "/quit")
        await wait_until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert app.return_code == 0


@pytest.fixture
def autostart_env(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The daemon autostart spawns inherits this process's environment: the tiny model."""
    monkeypatch.delenv("AXCHAT_NO_AUTOSTART", raising=False)
    monkeypatch.setenv("AXCHAT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "axchat" / "daemon.log"


async def test_chat_starts_a_daemon_showing_progress_in_the_status_line(
    autostart_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = str(short_socket_dir() / "run" / "axchat.sock")
    app = make_app(socket, tmp_path, start_daemon=True, max_tokens=4)
    said: list[str] = []
    original = StatusLine.say

    def record(self: StatusLine, text: str, *, error: bool = False) -> None:
        said.append(text)
        original(self, text, error=error)

    monkeypatch.setattr(StatusLine, "say", record)  # before mount: the first words count too
    try:
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_until(pilot, lambda: app.client is not None, "the started daemon", timeout_s=START_S)
            assert any("starting one" in text for text in said), said
            assert app.query_one(StatusLine).text.startswith("connected"), said
            await send(pilot, "Hello")
            await wait_until(pilot, lambda: len(app.conversation.turns) == 2 and app.pending is None, "an answer")
        assert "ready: serving" in autostart_env.read_text()
    finally:
        subprocess.run(
            [sys.executable, "-m", "axchat", "stop", "--socket", socket],
            env=os.environ,
            capture_output=True,
            timeout=60,
        )
