"""autostart's progress, written for a terminal's stderr from a worker thread, shown in
the TUI's status line instead."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from textual.app import App


class StatusLineProgress(io.TextIOBase):
    def __init__(self, app: App[Any], say: Callable[[str], object]) -> None:
        super().__init__()
        self.app = app
        self.say = say

    def isatty(self) -> bool:
        return True  # so autostart reports every second, rewriting its line

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\033[K", "").strip()
        if line:
            self.app.call_from_thread(self.say, line)
        return len(text)
