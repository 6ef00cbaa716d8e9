"""A chat's turns and settings, and where they are kept on disk between runs.

The client owns the conversation: every request resends all of it. Each change is
written at once (atomically), so a crash of the frontend loses nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Literal

import msgspec

from axchat.protocol import v1

Role = Literal["user", "assistant"]


class Turn(msgspec.Struct, omit_defaults=True):
    role: Role
    content: str
    # For an assistant turn: how it ended ("stop", "length", "cancelled", ...).
    finish_reason: str | None = None


class Conversation(msgspec.Struct, omit_defaults=True):
    id: str = msgspec.field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    created: float = msgspec.field(default_factory=time.time)
    system: str | None = None
    temperature: float = 0.0
    turns: list[Turn] = []
    # Text the user typed that was not answered (the daemon went away): it goes back
    # into the input box, and on --resume too.
    draft: str = ""

    def messages(self) -> list[v1.ChatMessage]:
        """What the daemon is sent for the next answer."""
        head = [v1.ChatMessage(role="system", content=self.system)] if self.system else []
        return head + [v1.ChatMessage(role=t.role, content=t.content) for t in self.turns]

    def fresh(self) -> Conversation:
        """A new, empty conversation that keeps this one's settings (`/clear`)."""
        return Conversation(system=self.system, temperature=self.temperature)

    def to_markdown(self) -> str:
        """The transcript `/save` writes."""
        lines = [f"# axchat conversation {self.id}", ""]
        if self.system:
            lines += ["**System:**", "", self.system, ""]
        for turn in self.turns:
            label = "User" if turn.role == "user" else "Assistant"
            suffix = f" _({turn.finish_reason})_" if turn.finish_reason == "cancelled" else ""
            lines += [f"**{label}:**{suffix}", "", turn.content, ""]
        return "\n".join(lines)


def default_directory() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "axchat" / "conversations"


class ConversationStore:
    """One JSON file per conversation; the newest file is the one `--resume` opens."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_directory()

    def path_of(self, conversation: Conversation) -> Path:
        return self.directory / f"{conversation.id}.json"

    def save(self, conversation: Conversation) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path_of(conversation)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_bytes(msgspec.json.encode(conversation))
        os.replace(tmp, path)  # a crash mid-write leaves the previous version whole

    def load(self, path: Path) -> Conversation:
        return msgspec.json.decode(path.read_bytes(), type=Conversation)

    def latest(self) -> Conversation | None:
        if not self.directory.is_dir():
            return None
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for path in reversed(files):
            try:
                return self.load(path)
            except (msgspec.DecodeError, OSError):
                continue  # an unreadable file must not stop the user from chatting
        return None


def open_conversation(
    store: ConversationStore, *, resume: bool, system: str | None, temperature: float | None
) -> Conversation:
    """The last conversation (with `resume`) or a new one; flags given override its settings."""
    conversation = (store.latest() if resume else None) or Conversation()
    if system is not None:
        conversation.system = system
    if temperature is not None:
        conversation.temperature = temperature
    return conversation
