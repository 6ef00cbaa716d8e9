"""`axchat chat` driven through Textual's pilot against a real daemon on the tiny model."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HELD, HELD_TOKENS, DaemonProcess, RawClient, short_socket_dir, start_problem_daemon
from textual.pilot import Pilot
from textual.worker import Worker

from axchat.aclient import AsyncClient
from axchat.frontends.chat.app import ChatApp, PendingAnswer
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


class RecordingChatApp(ChatApp):
    """The app as users run it, also keeping the last request it sent, so a test can
    check what went to the daemon."""

    last_request: v1.Generate | None = None

    def stream_answer(self, client: AsyncClient, request: v1.Generate, pending: PendingAnswer) -> Worker[None]:
        self.last_request = request
        return super().stream_answer(client, request, pending)


def make_app(
    socket: str, store: ConversationStore, conversation: Conversation | None = None, **kw: object
) -> RecordingChatApp:
    return RecordingChatApp(socket=socket, conversation=conversation or Conversation(), store=store, **kw)  # type: ignore[arg-type]


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


async def streaming(pilot: Pilot[None], prompt: str) -> PendingAnswer:
    """Send `prompt` and wait until its answer has begun to stream."""
    app = pilot.app
    assert isinstance(app, ChatApp)
    await send(pilot, prompt)
    await wait_until(pilot, lambda: app.pending is not None and app.pending.text, "the first tokens")
    assert app.pending is not None and app.pending.handle is not None
    return app.pending


async def test_send_streams_the_answer_into_a_bubble(daemon: DaemonProcess, store: ConversationStore) -> None:
    first, _ = reference(daemon, [user("Hello there")], max_tokens=12)
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
        assert f"context {used}/8192" in footer and "cpu" in footer
        assert "TTFT: " in footer and "Tokens/sec: " in footer and "CPU %: " in footer
    saved = store.latest()
    assert saved is not None and [t.content for t in saved.turns] == ["Hello there", first, "And then?", second]


async def test_escape_cancels_the_answer_on_the_daemon(daemon: DaemonProcess, store: ConversationStore) -> None:
    app = make_app(daemon.socket, store, **HELD)
    async with app.run_test(size=(100, 40)) as pilot:
        await connected(pilot)
        pending = await streaming(pilot, "Go on forever")
        assert pending.handle is not None
        request_id = pending.handle.request_id
        await pilot.press("escape")
        await answered(pilot, 2)
        line = daemon.wait_for_line(f"request {request_id}@", timeout_s=WAIT_S)
        assert "finish=cancelled" in line
        tokens = int(line.split("Tokens: ")[1].split()[0])
        assert 0 < tokens < HELD_TOKENS
        partial = app.conversation.turns[-1]
        assert partial.role == "assistant" and partial.finish_reason == "cancelled" and partial.content
        bubble = app.query_one(AssistantBubble)
        assert bubble.source == partial.content and bubble.border_subtitle == "stopped"
        assert "stopped" in app.query_one(StatusLine).text
    saved = store.latest()
    assert saved is not None and saved.turns[-1].finish_reason == "cancelled"


async def test_ctrl_c_stops_the_answer_then_quits(daemon: DaemonProcess, store: ConversationStore) -> None:
    app = make_app(daemon.socket, store, **HELD)
    async with app.run_test(size=(100, 40)) as pilot:
        await connected(pilot)
        await streaming(pilot, "Talk")
        await pilot.press("ctrl+c")
        await answered(pilot, 2)
        assert app.is_running and app.conversation.turns[-1].finish_reason == "cancelled"
        assert "Ctrl+C again quits" in app.query_one(StatusLine).text
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: not app.is_running, "the app to quit")


async def test_a_new_prompt_stops_the_running_answer(daemon: DaemonProcess, store: ConversationStore) -> None:
    app = make_app(daemon.socket, store, **HELD)
    async with app.run_test(size=(100, 40)) as pilot:
        await connected(pilot)
        first = await streaming(pilot, "One")
        assert first.handle is not None
        second = await streaming(pilot, "Two")
        line = daemon.wait_for_line(f"request {first.handle.request_id}@", timeout_s=WAIT_S)
        assert "finish=cancelled" in line
        turns = app.conversation.turns
        assert [t.content for t in turns[:3]] == ["One", first.text, "Two"] and turns[1].finish_reason == "cancelled"
        assert app.last_request is not None and app.last_request.messages == [
            user("One"),
            assistant(first.text),
            user("Two"),
        ]
        await pilot.press("escape")
        await answered(pilot, 4)
        assert app.conversation.turns[3] == Turn("assistant", second.text, "cancelled")
        # /clear mid-answer: the stopped answer stays with the conversation it belongs to.
        # Start from an empty conversation, so the answer has the whole context to run in
        # and cannot end on `length` before the /clear lands.
        await send(pilot, "/clear")
        await wait_until(pilot, lambda: app.conversation.turns == [], "a fresh conversation")
        before = app.conversation
        third = await streaming(pilot, "Three")
        await send(pilot, "/clear")
        await wait_until(pilot, lambda: app.pending is None and before.turns[-1].role == "assistant", "the stop")
        assert app.conversation.turns == []
        kept = store.load(store.path_of(before))
        # The app may render slower than the daemon generates, so the answer can have
        # finished (`length`) before the /clear was read; either way it stays here.
        assert kept.turns[-2] == Turn("user", "Three")
        assert kept.turns[-1].role == "assistant" and kept.turns[-1].content == third.text
        assert kept.turns[-1].finish_reason in ("cancelled", "length")


async def test_slash_commands(daemon: DaemonProcess, store: ConversationStore, tmp_path: Path) -> None:
    app = make_app(daemon.socket, store, max_tokens=10)
    async with app.run_test(size=(100, 40)) as pilot:
        await connected(pilot)
        status = app.query_one(StatusLine)

        await send(pilot, "/system Be brief.")
        assert app.conversation.system == "Be brief." and status.text == "system prompt set"
        await send(pilot, "Hi")
        await answered(pilot, 2)
        expected, _ = reference(daemon, [v1.ChatMessage(role="system", content="Be brief."), user("Hi")], max_tokens=10)
        assert app.last_request is not None and app.last_request.messages is not None
        assert app.last_request.messages[0] == v1.ChatMessage(role="system", content="Be brief.")
        assert app.query_one(AssistantBubble).source == expected

        await send(pilot, "/temperature 0.7")
        assert status.text == "temperature 0.7" and "temperature 0.7" in app.query_one(InfoFooter).text
        await send(pilot, "More")
        await answered(pilot, 4)
        assert app.last_request.sampling.temperature == 0.7

        transcript = tmp_path / "chat.md"
        await send(pilot, f"/save {transcript}")
        text = transcript.read_text()
        assert "**System:**\n\nBe brief." in text
        assert f"**User:**\n\nHi\n\n**Assistant:**\n\n{expected}\n" in text and "**User:**\n\nMore" in text
        assert status.text == f"saved 4 turns to {transcript}"

        assert "TTFT: " in app.query_one(InfoFooter).text
        await send(pilot, "/stats")
        assert "TTFT: " not in app.query_one(InfoFooter).text and status.text == "stats hidden"
        await send(pilot, "/stats")
        assert "TTFT: " in app.query_one(InfoFooter).text

        await send(pilot, "/help")
        await wait_until(pilot, lambda: app.query(NoteBubble), "the help note")
        assert "/temperature T" in app.query_one(NoteBubble).source

        await send(pilot, "/clear")
        await wait_until(pilot, lambda: not app.query(UserBubble), "the view to empty")
        assert app.conversation.turns == [] and app.conversation.system == "Be brief."
        assert app.conversation.temperature == 0.7

        await send(pilot, "/bogus")
        assert "unknown command /bogus" in status.text and app.query_one(PromptInput).text == ""


async def test_resume_reopens_the_last_conversation(daemon: DaemonProcess, store: ConversationStore) -> None:
    from axchat.frontends.chat.conversation import open_conversation

    earlier = Conversation(turns=[Turn("user", "Old question"), Turn("assistant", "Old answer", "stop")])
    store.save(Conversation(turns=[Turn("user", "older still")]))
    store.save(earlier)
    conversation = open_conversation(store, resume=True, system=None, temperature=None)
    assert conversation.id == earlier.id
    app = make_app(daemon.socket, store, conversation, max_tokens=8)
    async with app.run_test(size=(100, 40)) as pilot:
        await connected(pilot)
        assert [b.text for b in app.query(UserBubble)] == ["Old question"]
        assert [b.source for b in app.query(AssistantBubble)] == ["Old answer"]
        await send(pilot, "New question")
        await answered(pilot, 4)
        assert app.last_request is not None
        assert app.last_request.messages == [user("Old question"), assistant("Old answer"), user("New question")]
    assert store.latest() is not None and store.latest().id == earlier.id  # type: ignore[union-attr]


async def test_no_daemon_keeps_the_prompt(store: ConversationStore) -> None:
    socket = str(short_socket_dir() / "none.sock")
    app = make_app(socket, store)
    async with app.run_test(size=(100, 40)) as pilot:
        status = app.query_one(StatusLine)
        await wait_until(pilot, lambda: "no axchat daemon is running" in status.text, "the status line")
        assert socket in status.text and "axchat serve" in status.text
        assert "not connected" in app.query_one(InfoFooter).text
        await send(pilot, "Anyone there?")
        assert app.query_one(PromptInput).text == "Anyone there?"
        assert "kept in the input" in status.text
        assert not app.query(UserBubble) and app.conversation.turns == []


async def test_daemon_restart_gives_the_prompt_back_and_reconnects(
    tiny_model_dir: Path, store: ConversationStore
) -> None:
    first = DaemonProcess(tiny_model_dir).wait_ready()
    second: DaemonProcess | None = None
    try:
        app = make_app(first.socket, store, **HELD, heartbeat_s=0.5, reconnect_cap_s=1.0)
        async with app.run_test(size=(100, 40)) as pilot:
            await connected(pilot)
            prompt_input, status = app.query_one(PromptInput), app.query_one(StatusLine)
            await streaming(pilot, "Long answer please")
            first.stop(signal.SIGKILL)  # no goodbye: only the heartbeat can tell
            await wait_until(pilot, lambda: prompt_input.text == "Long answer please", "the prompt to come back")
            assert app.conversation.turns == []
            await wait_until(pilot, lambda: not app.query(UserBubble) and not app.query(AssistantBubble), "no bubbles")
            saved = store.latest()
            assert saved is not None and saved.draft == "Long answer please"  # a crash now loses nothing
            await wait_until(pilot, lambda: "daemon unavailable" in status.text, "the status line to say so")
            assert app.client is None and "not connected" in app.query_one(InfoFooter).text

            second = DaemonProcess(tiny_model_dir, socket=first.socket).wait_ready()
            await wait_until(pilot, lambda: status.text.startswith("connected"), "the reconnect")
            app.max_tokens, app.ignore_eos = 6, False
            prompt_input.focus()
            await pilot.press("enter")
            await answered(pilot, 2)
            assert app.conversation.turns[0].content == "Long answer please" and app.conversation.draft == ""
            assert app.query_one(AssistantBubble).source == app.conversation.turns[1].content
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            assert second.stop() == 0, second.log_text()


async def test_daemon_dying_before_any_token_is_asked_again(tiny_model_dir: Path, store: ConversationStore) -> None:
    """The async client hears the drop itself (socket monitor), and with nothing shown
    yet the app asks once more when the daemon is back, without the user's help."""
    sock = str(short_socket_dir() / "d.sock")
    problem = start_problem_daemon(sock)
    real: DaemonProcess | None = None
    try:
        app = make_app(sock, store, max_tokens=6)
        async with app.run_test(size=(100, 40)) as pilot:
            await connected(pilot)
            status = app.query_one(StatusLine)
            await send(pilot, "Try twice")
            await wait_until(pilot, lambda: problem.poll() is not None, "the problem daemon to die")
            assert problem.returncode == 3
            await wait_until(pilot, lambda: "daemon_restarted" in status.text, "the status line to say so")
            assert app.pending is not None and app.conversation.turns[0].content == "Try twice"
            real = DaemonProcess(tiny_model_dir, socket=sock).wait_ready()
            await answered(pilot, 2)
            expected, _ = reference(real, [user("Try twice")], max_tokens=6)
            assert app.conversation.turns[1].content == expected
            assert app.query_one(PromptInput).text == ""  # nothing was handed back
            assert "asked again" in status.text
    finally:
        if problem.poll() is None:
            problem.kill()
            problem.wait()
        if real is not None:
            assert real.stop() == 0, real.log_text()
