"""The full-screen chat: sends the whole conversation each turn and streams the answer
into a Markdown bubble, reconnecting when the daemon goes away.

Every answer is one exclusive async worker; a new prompt, Esc, Ctrl+C or a lost
daemon cancels it. A cancelled answer is cancelled on the daemon too and kept as a
partial turn; an answer the daemon could not give puts the prompt back in the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import ClassVar

import zmq
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownStream
from textual.worker import Worker, WorkerState

from axchat import connection
from axchat.aclient import AsyncClient, DaemonRestarted, DaemonUnavailable, RequestFailed
from axchat.connection import retry_once_async
from axchat.frontends.chat import commands
from axchat.frontends.chat.answer import PendingAnswer
from axchat.frontends.chat.conversation import Conversation, ConversationStore, Turn
from axchat.frontends.chat.daemon_link import HEARTBEAT_S, RECONNECT_CAP_S, DaemonLink
from axchat.frontends.chat.widgets import (
    AssistantBubble,
    ConversationView,
    InfoFooter,
    NoteBubble,
    PromptInput,
    StatusLine,
    UserBubble,
)
from axchat.frontends.loading import loading_line
from axchat.protocol import v1
from axchat.stats_line import format_host, format_stats

STALL_TIMEOUT_S = 300.0  # the heartbeat notices a dead daemon long before this
CANCEL_SEND_S = 1.0


class ChatApp(DaemonLink, App[None]):
    TITLE = "axchat"
    CSS = """
    ConversationView { height: 1fr; padding: 0 1; }
    .bubble { border: round $primary-darken-1; padding: 0 1; height: auto; }
    UserBubble.bubble { border: round $accent; margin: 0 0 1 8; }
    AssistantBubble.bubble { margin: 0 8 1 0; }
    AssistantBubble.stopped { border: round $warning; }
    .note { border: dashed $secondary; padding: 0 1; margin: 0 0 1 0; }
    StatusLine { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    StatusLine.error { color: $error; }
    PromptInput { height: auto; max-height: 10; min-height: 3; }
    InfoFooter { height: auto; max-height: 3; padding: 0 1; background: $panel; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop_answer", "Stop answer", priority=True),
        Binding("ctrl+c", "interrupt", "Stop / quit", priority=True),
    ]

    class AnswerEnded(Message):
        """An answer stopped streaming: `finish_reason` from the daemon, or "failed"."""

        def __init__(self, finish_reason: str, done: v1.Done | None) -> None:
            super().__init__()
            self.finish_reason = finish_reason
            self.done = done

    def __init__(
        self,
        *,
        socket: str | None,
        conversation: Conversation,
        store: ConversationStore,
        max_tokens: int = 512,
        ignore_eos: bool = False,
        reconnect_cap_s: float = RECONNECT_CAP_S,
        heartbeat_s: float = HEARTBEAT_S,
        start_daemon: bool = False,
    ) -> None:
        super().__init__()
        self.start_daemon = start_daemon  # when none answers at first: start one, as `ask` does
        self.socket = socket
        self.conversation = conversation
        self.store = store
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.reconnect_cap_s = reconnect_cap_s
        self.heartbeat_s = heartbeat_s
        self.client: AsyncClient | None = None
        self.welcome: v1.Welcome | None = None
        self.pending: PendingAnswer | None = None
        self.last_done: v1.Done | None = None
        self.show_stats = True
        self._quit_armed = False
        self._last_traffic = time.monotonic()
        self._pinging = False
        self._awaiting_restart = False  # the answer worker waits for a restarted daemon

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield ConversationView(id="conversation")
        yield StatusLine(id="status")
        yield PromptInput(id="prompt")
        yield InfoFooter(id="footer")

    async def on_mount(self) -> None:
        view = self.query_one(ConversationView)
        for turn in self.conversation.turns:
            if turn.role == "user":
                await view.mount(UserBubble(turn.content))
            else:
                bubble = AssistantBubble(turn.content)
                await view.mount(bubble)
                bubble.mark_finished(turn.finish_reason or "stop")
        prompt = self.query_one(PromptInput)
        if self.conversation.draft:
            prompt.text = self.conversation.draft
        prompt.focus()
        self.refresh_footer()
        self.connect_daemon()
        self.set_interval(self.heartbeat_s, self.check_daemon)

    @property
    def status_line(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def prompt_input(self) -> PromptInput:
        return self.query_one(PromptInput)

    def refresh_footer(self) -> None:
        parts: list[str] = []
        if self.welcome is None:
            parts.append("not connected")
        else:
            # Unknown until an answer finishes in this session (a stopped one reports nothing).
            usage = None if self.last_done is None else self.last_done.usage
            used = "?" if usage is None else str(usage.prompt_tokens + usage.completion_tokens)
            parts += [
                self.welcome.model,
                self.welcome.device,
                f"context {used}/{self.welcome.context_length}",
            ]
        parts.append(f"temperature {self.conversation.temperature:g}")
        text = " · ".join(parts)
        if self.show_stats and self.last_done is not None:
            text += "\n" + format_stats(self.last_done.stats) + "\n" + format_host(self.last_done.stats)
        self.query_one(InfoFooter).show(text)

    def answer_lost(self, reason: str) -> None:
        """The daemon went away: the answer in flight, if any, fails and gives its prompt back."""
        pending = self.pending
        if pending is not None and not pending.settled:
            pending.lost_daemon = True
            self.fail_answer(pending, f"the daemon went away ({reason}); your prompt is back in the input")
            self.workers.cancel_group(self, "answer")

    # ------------------------------------------------------------ input

    @on(PromptInput.Submitted)
    async def on_prompt_submitted(self, event: PromptInput.Submitted) -> None:
        self._quit_armed = False
        try:
            command = commands.parse(event.text)
        except commands.CommandError as exc:
            # A rejected command never reaches the model, and leaves the input empty for
            # the next one instead of having it appended.
            event.prompt_input.clear()
            self.status_line.say(str(exc), error=True)
            return
        event.prompt_input.clear()
        if command is not None:
            await self.run_command(command)
            return
        await self.send_prompt(commands.unescape_prompt(event.text))

    async def send_prompt(self, prompt: str) -> None:
        if self.client is None:
            self.prompt_input.text = prompt
            # Say why nothing happened: not yet connected, and what to do about it (once,
            # however often Enter is pressed).
            why = self.status_line.text.split(" (retrying")[0].removeprefix("not sent: ").split("; your prompt")[0]
            self.status_line.say(f"not sent: {why}; your prompt is kept in the input", error=True)
            return
        if self.pending is not None:
            # Stop it now, not when the new worker starts: mounting the new bubbles awaits.
            self.settle_answer(self.pending, "cancelled", None)
            self.workers.cancel_group(self, "answer")
        user_turn = Turn("user", prompt)
        self.conversation.turns.append(user_turn)
        self.conversation.draft = ""
        self.store.save(self.conversation)
        view = self.query_one(ConversationView)
        user_bubble = UserBubble(prompt)
        bubble = AssistantBubble()
        bubble.add_class("streaming")
        await view.mount_all([user_bubble, bubble])
        view.anchor()
        self.pending = PendingAnswer(prompt, self.conversation, user_turn, user_bubble, bubble)
        request = v1.Generate(
            messages=self.conversation.messages(),
            sampling=v1.Sampling(
                temperature=self.conversation.temperature, max_tokens=self.max_tokens, ignore_eos=self.ignore_eos
            ),
        )
        self.stream_answer(self.client, request, self.pending)

    # ------------------------------------------------------------ answers

    @work(exclusive=True, group="answer")
    async def stream_answer(self, client: AsyncClient, request: v1.Generate, pending: PendingAnswer) -> None:
        stream = Markdown.get_stream(pending.bubble)
        try:
            await retry_once_async(
                lambda: self._stream_events(client, request, pending, stream),
                shown=lambda: bool(pending.text),
                announce=lambda exc: self.status_line.say(f"{exc}; asking once more when it is back…", error=True),
                back=lambda wait_s: self._daemon_back(client, wait_s),
            )
        except asyncio.CancelledError:
            if pending.handle is not None and not pending.lost_daemon:
                # Best effort: the daemon also cancels the requests of clients that vanish.
                with contextlib.suppress(TimeoutError, zmq.ZMQError):
                    await asyncio.wait_for(pending.handle.cancel(), CANCEL_SEND_S)
            await stream.stop()
            self.settle_answer(pending, "cancelled", None)
            raise
        except (DaemonUnavailable, DaemonRestarted, zmq.ZMQError) as exc:
            pending.lost_daemon = True
            self.fail_answer(pending, f"the daemon went away ({exc}); your prompt is back in the input")
            self.daemon_lost(str(exc))
        except RequestFailed as exc:
            self.fail_answer(pending, str(exc))
        finally:
            await stream.stop()

    async def _stream_events(
        self, client: AsyncClient, request: v1.Generate, pending: PendingAnswer, stream: MarkdownStream
    ) -> None:
        pending.handle = await client.generate(request)
        async for event in pending.handle.events(stall_timeout_s=STALL_TIMEOUT_S):
            self._last_traffic = time.monotonic()
            if isinstance(event, v1.Loading):
                pending.loading_shown = True
                self.status_line.say(loading_line(event))
            elif isinstance(event, v1.Delta):
                if pending.loading_shown:
                    pending.loading_shown = False
                    self.status_line.say("model loaded again")
                pending.text += event.text
                await stream.write(event.text)
            elif isinstance(event, v1.Done):
                if event.finish_reason == "error":
                    detail = event.error.message if event.error else "unknown error"
                    self.fail_answer(pending, f"the daemon failed to answer: {detail}; your prompt is back")
                elif event.finish_reason == "cancelled":
                    # Not ours (ours ends the worker first): the daemon is shutting down.
                    self.fail_answer(pending, "the daemon stopped the answer; your prompt is back in the input")
                else:
                    await stream.stop()  # the bubble shows every token before the turn is kept
                    self.settle_answer(pending, event.finish_reason, event)
            elif isinstance(event, v1.Error):
                self.fail_answer(pending, f"{event.code}: {event.message}; your prompt is back in the input")
                if event.code == "shutting_down":
                    self.daemon_lost("it is shutting down")

    async def _daemon_back(self, client: AsyncClient, wait_s: float) -> bool:
        """Wait up to `wait_s` for a restarted daemon to answer on the same socket.
        The heartbeat holds off meanwhile: this wait is its job done more patiently."""
        self._awaiting_restart = True
        try:
            welcome = await connection.hello_again(client, wait_s)
        finally:
            self._awaiting_restart = False
        if welcome is None:
            return False
        self.welcome = welcome
        self._last_traffic = time.monotonic()
        self.status_line.say("the daemon is back; asked again")
        return True

    def settle_answer(self, pending: PendingAnswer, finish_reason: str, done: v1.Done | None) -> None:
        """Keep the answer (whole or partial) in the conversation, once."""
        if pending.settled:
            return
        pending.settled = True
        if self.pending is pending:
            self.pending = None
        pending.conversation.turns.append(Turn("assistant", pending.text, finish_reason))
        self.store.save(pending.conversation)
        pending.bubble.mark_finished(finish_reason)
        self.post_message(self.AnswerEnded(finish_reason, done))

    def fail_answer(self, pending: PendingAnswer, reason: str) -> None:
        """The daemon gave no answer: forget the turn, give the prompt back."""
        if pending.settled:
            return
        pending.settled = True
        if self.pending is pending:
            self.pending = None
        if pending.user_turn in pending.conversation.turns:
            pending.conversation.turns.remove(pending.user_turn)
            self.store.save(pending.conversation)
        prompt_input = self.prompt_input
        typed = prompt_input.text
        prompt_input.text = pending.prompt + ("\n" + typed if typed.strip() else "")
        self.conversation.draft = prompt_input.text
        self.store.save(self.conversation)
        pending.user_bubble.remove()
        pending.bubble.remove()
        self.status_line.say(reason, error=True)
        self.post_message(self.AnswerEnded("failed", None))

    @on(AnswerEnded)
    def on_answer_ended(self, event: AnswerEnded) -> None:
        if event.done is not None:
            self.last_done = event.done
            self.refresh_footer()

    def action_stop_answer(self) -> None:
        if self.pending is not None:
            self.workers.cancel_group(self, "answer")
            self.status_line.say("answer stopped")

    def action_interrupt(self) -> None:
        if self.pending is not None:
            self.action_stop_answer()
            self._quit_armed = True
            self.status_line.say("answer stopped; Ctrl+C again quits")
        elif self._quit_armed:
            self.exit()
        else:
            self._quit_armed = True
            self.status_line.say("Ctrl+C again quits")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # A worker that died of a bug must say so, not leave a bubble streaming forever.
        if event.state == WorkerState.ERROR and event.worker.group == "answer" and self.pending is not None:
            self.fail_answer(self.pending, f"internal error: {event.worker.error!r}")

    # ------------------------------------------------------------ slash commands

    async def run_command(self, command: commands.Command) -> None:
        if isinstance(command, commands.Quit):
            self.exit()
        elif isinstance(command, commands.ToggleStats):
            self.show_stats = not self.show_stats
            self.refresh_footer()
            self.status_line.say("stats shown" if self.show_stats else "stats hidden")
        elif isinstance(command, commands.Help):
            view = self.query_one(ConversationView)
            await view.mount(NoteBubble(commands.HELP))
            view.anchor()
        else:
            if isinstance(command, commands.Clear) and self.pending is not None:
                self.action_stop_answer()
            try:
                conversation, said = commands.apply(command, self.conversation)
            except commands.CommandError as exc:
                self.status_line.say(str(exc), error=True)
                return
            if conversation is not self.conversation:  # /clear
                await self.query_one(ConversationView).remove_children()
                self.last_done = None
            self.conversation = conversation
            self.store.save(conversation)
            self.refresh_footer()
            self.status_line.say(said)

    async def on_unmount(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
