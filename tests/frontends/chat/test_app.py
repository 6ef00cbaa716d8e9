"""`axchat chat` driven through Textual's pilot against a real daemon on the tiny model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, RawClient, short_socket_dir
from textual.pilot import Pilot

from axchat.frontends.chat.app import ChatApp
from axchat.frontends.chat.conversation import Conversation, ConversationStore, Turn
from axchat.frontends.chat.widgets import AssistantBubble, InfoFooter, NoteBubble, PromptInput, StatusLine, UserBubble
from axchat.protocol import v1

WAIT_S = 30.0


async def wait_until(pilot: Pilot[None], condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await pilot.pause(0.02)


def reference(daemon: DaemonProcess, messages: list[v1.ChatMessage], **sampling: object) -> tuple[str, v1.Done]:
    raw = RawClient(daemon.socket)
    try:
        raw.send("ref", v1.Generate(messages=messages, sampling=v1.Sampling(**sampling)))  # type: ignore[arg-type]
        events = list(raw.stream("ref"))
    finally:
        raw.close()
    done = events[-1]
    assert isinstance(done, v1.Done)
    return "".join(e.text for e in events if isinstance(e, v1.Delta)), done


def user(text: str) -> v1.ChatMessage:
    return v1.ChatMessage(role="user", content=text)


def assistant(text: str) -> v1.ChatMessage:
    return v1.ChatMessage(role="assistant", content=text)


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return ConversationStore(tmp_path / "conversations")


def make_app(socket: str, store: ConversationStore, conversation: Conversation | None = None, **kw: object) -> ChatApp:
    return ChatApp(socket=socket, conversation=conversation or Conversation(), store=store, **kw)  # type: ignore[arg-type]


async def connected(pilot: Pilot[None]) -> ChatApp:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await wait_until(pilot, lambda: app.client is not None, "the app to connect")
    return app


async def send(pilot: Pilot[None], text: str) -> None:
    """Type `text` key by key, as a user would, and press Enter."""
    pilot.app.query_one(PromptInput).focus()
    await pilot.press(*[{" ": "space"}.get(ch, ch) for ch in text])
    await pilot.press("enter")


async def answered(pilot: Pilot[None], turns: int) -> ChatApp:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await wait_until(pilot, lambda: app.pending is None and len(app.conversation.turns) >= turns, f"{turns} turns")
    return app


async def test_send_streams_the_answer_into_a_bubble(daemon: DaemonProcess, store: ConversationStore) -> None:
    first, done1 = reference(daemon, [user("Hello there")], max_tokens=12)
    app = make_app(daemon.socket, store, max_tokens=12)
    async with app.run_test(size=(100, 40)) as pilot:
        await connected(pilot)
        await send(pilot, "Hello there")
        await answered(pilot, 2)
        bubbles = app.query(AssistantBubble)
        assert [b.text for b in app.query(UserBubble)] == ["Hello there"]
        assert len(bubbles) == 1 and bubbles[0].source == first
        assert app.query_one(PromptInput).text == ""
        # The second turn resends the first exchange: the client owns the memory.
        second, done2 = reference(daemon, [user("Hello there"), assistant(first), user("And then?")], max_tokens=12)
        await send(pilot, "And then?")
        await answered(pilot, 4)
        assert app.last_request is not None and app.last_request.messages == [
            user("Hello there"),
            assistant(first),
            user("And then?"),
        ]
        assert app.query(AssistantBubble)[1].source == second
        footer = app.query_one(InfoFooter).text
        used = done2.usage.prompt_tokens + done2.usage.completion_tokens
        assert f"context {used}/2048" in footer and "cpu" in footer
        assert "TTFT: " in footer and "Tokens/sec: " in footer and "CPU %: " in footer
    saved = store.latest()
    assert saved is not None and [t.content for t in saved.turns] == ["Hello there", first, "And then?", second]
