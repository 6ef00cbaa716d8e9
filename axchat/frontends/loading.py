"""One line for people about a `loading` event: the daemon is loading its model again
after keep-alive unloaded it. Shared by `ask` and both chat modes."""

from __future__ import annotations

from axchat.protocol import v1


def loading_line(body: v1.Loading) -> str:
    guide = "" if body.last_load_s is None else f" (last load took {body.last_load_s:.0f}s)"
    return f"loading {body.model} again after idling: {body.stage}, {body.elapsed_s:.0f}s{guide}"
