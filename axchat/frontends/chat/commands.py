"""Slash commands typed into the chat input: parsed here, carried out by the app."""

from __future__ import annotations

from dataclasses import dataclass

HELP = """\
**Commands**

| command | what it does |
|---|---|
| `/system TEXT` | set the system prompt for the next answers (`/system` alone clears it) |
| `/temperature T` | sampling temperature, 0 = greedy |
| `/clear` | start a new conversation (keeps the system prompt) |
| `/save FILE` | write the conversation to FILE as Markdown |
| `/stats` | show or hide the timing figures in the footer |
| `/help` | this list |

**Keys**: Enter sends, Shift+Enter (or Ctrl+J) adds a new line, Esc or Ctrl+C stops the \
answer, Ctrl+C twice quits.
"""


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


Command = SetSystem | SetTemperature | Clear | Save | ToggleStats | Help


def parse(text: str) -> Command | None:
    """The command in `text`, or None when it is a prompt (not starting with `/`).

    A prompt that really starts with a slash can be sent as `//...`.
    """
    stripped = text.strip()
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
    raise CommandError(f"unknown command /{name}; /help lists them")


def unescape_prompt(text: str) -> str:
    """`//text` sends `/text`."""
    stripped = text.lstrip()
    return stripped[1:] if stripped.startswith("//") else text
