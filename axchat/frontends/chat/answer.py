"""One exchange in flight in the full-screen chat: the user's turn, its bubbles and the
answer so far, with how it is going (settled, lost with the daemon, loading shown)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from axchat.aclient import GenerateHandle
from axchat.frontends.chat.conversation import Conversation, Turn
from axchat.frontends.chat.widgets import AssistantBubble, UserBubble


@dataclass
class PendingAnswer:
    """One exchange in flight: the user's turn, its bubbles, the answer so far."""

    prompt: str
    conversation: Conversation  # the one it belongs to, even after a /clear
    user_turn: Turn
    user_bubble: UserBubble
    bubble: AssistantBubble
    text: str = ""
    handle: GenerateHandle | None = None
    settled: bool = False
    lost_daemon: bool = False
    loading_shown: bool = False
    started: float = field(default_factory=time.monotonic)
