"""The chat screen's pieces: bubbles, the scrolling conversation, the prompt box, the
status line and the footer. Each reports what happened with a small message class."""

from __future__ import annotations

from textual import events
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Markdown, Static, TextArea

# Keys that put a newline in the prompt instead of sending it. Most terminals send
# the same bytes for Shift+Enter and Enter; Ctrl+J works everywhere.
NEWLINE_KEYS = frozenset({"shift+enter", "ctrl+j", "alt+enter"})


class UserBubble(Static):
    """What the user sent, shown as typed (not as Markdown)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False, classes="bubble")
        self.border_title = "You"
        self.text = text


class AssistantBubble(Markdown):
    """An answer, rendered as Markdown as it streams in."""

    def __init__(self, text: str = "") -> None:
        super().__init__(text, classes="bubble")
        self.border_title = "Assistant"

    def mark_finished(self, finish_reason: str) -> None:
        self.remove_class("streaming")
        if finish_reason == "cancelled":
            self.border_subtitle = "stopped"
            self.add_class("stopped")
        elif finish_reason == "length":
            self.border_subtitle = "cut at --max-tokens"


class NoteBubble(Markdown):
    """Help and notices from the app itself, not part of the conversation."""

    def __init__(self, text: str) -> None:
        super().__init__(text, classes="note")


class ConversationView(VerticalScroll):
    """Follows the newest token, unless the user has scrolled up to read."""

    def on_mount(self) -> None:
        self.anchor()


class PromptInput(TextArea):
    """The input box. Enter sends; a paste or Shift+Enter keeps newlines."""

    class Submitted(Message):
        def __init__(self, prompt_input: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt_input = prompt_input
            self.text = text

        @property
        def control(self) -> PromptInput:
            return self.prompt_input

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, show_line_numbers=False, tab_behavior="focus")
        self.placeholder = "Message (Enter sends, Shift+Enter new line, /help)"

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Submitted(self, self.text))
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)


class StatusLine(Static):
    """One line on the connection and on what the last command did."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", markup=False, id=id)
        self.text = ""

    def say(self, text: str, *, error: bool = False) -> None:
        self.text = text
        self.set_class(error, "error")
        self.update(text)


class InfoFooter(Static):
    """Model, device, context used of total, and the last answer's figures."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", markup=False, id=id)
        self.text = ""

    def show(self, text: str) -> None:
        self.text = text
        self.update(text)
