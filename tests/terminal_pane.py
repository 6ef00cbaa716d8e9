"""A program in a real terminal: a private tmux server's pane, 120x40, whose screen a
test reads and types into. For `axchat chat` full screen (tests/frontends/chat/test_tmux.py,
tests/test_lean_install.py)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable

WAIT_S = 60.0


class Pane:
    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.name = f"axchat-test-{uuid.uuid4().hex[:8]}"
        # A private server socket: the test neither sees nor disturbs anyone's tmux.
        self.tmux = ["tmux", "-L", self.name, "-f", "/dev/null"]
        shell_env = " ".join(f"{k}={_quote(v)}" for k, v in env.items())
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", self.name, "-x", "120", "-y", "40",
             f"env {shell_env} {' '.join(_quote(c) for c in command)}"],
            check=True,
            timeout=30,
        )  # fmt: skip

    def screen(self) -> str:
        proc = subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, timeout=30)
        return proc.stdout

    def alive(self) -> bool:
        return subprocess.run([*self.tmux, "has-session", "-t", self.name], capture_output=True, timeout=30).returncode == 0

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True, timeout=30)

    def wait(self, condition: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            text = self.screen() if self.alive() else ""
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.1)  # polling a screen with a deadline, not a synchronisation

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, timeout=30)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
