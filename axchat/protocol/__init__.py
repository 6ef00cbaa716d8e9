"""The wire contract between clients and the daemon; `current` is the version spoken."""

from axchat.protocol import v1 as current

__all__ = ["current"]
