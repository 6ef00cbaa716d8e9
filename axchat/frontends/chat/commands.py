"""Slash commands typed into either chat mode: parsed here, and those that only touch the
conversation carried out here too, so the full-screen app and --plain behave alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from axchat.frontends.chat.conversation import Conversation

# One command set for both chat modes (the full-screen app and --plain).
COMMANDS: tuple[tuple[str, str], ...] = (
    ("/system TEXT", "set the system prompt for the next answers (`/system` alone clears it)"),
    ("/temperature T", "sampling temperature, 0 = greedy"),
    ("/clear", "start a new conversation (keeps the system prompt)"),
    ("/save FILE", "write the conversation to FILE as Markdown"),
    ("/stats", "show or hide the timing figures of each answer"),
    ("/help", "this list"),
    ("/quit", "leave (also `/exit`, or `exit` / `quit` alone on a line)"),
)
KEYS_TUI = (
    "Enter sends, Shift+Enter (or Ctrl+J) adds a new line, Esc or Ctrl+C stops the answer, Ctrl+C twice quits."
)
KEYS_PLAIN = "Ctrl-C stops the answer; Ctrl-C at the prompt or Ctrl-D leaves."
LEAVE_WORDS = frozenset({"exit", "quit"})  # alone on a line, as the seed script took them

HELP = (
    "**Commands**\n\n| command | what it does |\n|---|---|\n"
    + "".join(f"| `{usage}` | {text} |\n" for usage, text in COMMANDS)
    + f"\n**Keys**: {KEYS_TUI}\n"
)
HELP_PLAIN = (
    "Commands:\n"
    + "".join(f"  {usage:<16} {text.replace('`', '')}\n" for usage, text in COMMANDS)
    + "A line starting with // sends a prompt that starts with /.\n"
    + KEYS_PLAIN
)


class CommandError(ValueError):
    """A slash command that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class SetSystem:
    text: str | None


@dataclass(frozen=True)
class SetTemperature:
    value: float


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class Save:
    path: str


@dataclass(frozen=True)
class ToggleStats:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Quit:
    pass


Command = SetSystem | SetTemperature | Clear | Save | ToggleStats | Help | Quit


def parse(text: str) -> Command | None:
    """The command in `text`, or None when it is a prompt (not starting with `/`).

    A prompt that really starts with a slash can be sent as `//...`.
    """
    stripped = text.strip()
    if stripped.lower() in LEAVE_WORDS:
        return Quit()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    name, _, arg = stripped[1:].partition(" ")
    arg = arg.strip()
    if name == "system":
        return SetSystem(arg or None)
    if name == "temperature":
        try:
            value = float(arg)
        except ValueError:
            raise CommandError(f"/temperature needs a number, e.g. `/temperature 0.7` (got {arg!r})") from None
        if not 0.0 <= value <= 10.0:
            raise CommandError(f"temperature must be between 0 and 10 (got {value:g})")
        return SetTemperature(value)
    if name == "clear":
        return Clear()
    if name == "save":
        if not arg:
            raise CommandError("/save needs a file name, e.g. `/save chat.md`")
        return Save(arg)
    if name == "stats":
        return ToggleStats()
    if name in ("help", "?"):
        return Help()
    if name in ("quit", "exit"):
        return Quit()
    raise CommandError(f"unknown command /{name}; /help lists them")


def unescape_prompt(text: str) -> str:
    """`//text` sends `/text`."""
    stripped = text.lstrip()
    return stripped[1:] if stripped.startswith("//") else text


def apply(command: SetSystem | SetTemperature | Clear | Save, conversation: Conversation) -> tuple[Conversation, str]:
    """Carry out a command that changes or writes the conversation, the same in both
    modes: the conversation to go on with, and one line saying what happened."""
    if isinstance(command, SetSystem):
        conversation.system = command.text
        return conversation, "system prompt set" if command.text else "system prompt cleared"
    if isinstance(command, SetTemperature):
        conversation.temperature = command.value
        return conversation, f"temperature {command.value:g}"
    if isinstance(command, Clear):
        return conversation.fresh(), "new conversation" + (" (system prompt kept)" if conversation.system else "")
    path = Path(command.path).expanduser()
    try:
        path.write_text(conversation.to_markdown(), encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"could not save to {path}: {exc.strerror or exc}") from None
    return conversation, f"saved {len(conversation.turns)} turns to {path}"
