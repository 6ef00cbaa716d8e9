"""`axchat chat`: a Textual full-screen chat, and `--plain` line chat, on the daemon."""

from axchat.frontends.chat.main import main

__all__ = ["main"]
