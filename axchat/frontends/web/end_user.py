"""Who an HTTP request is for, as the daemon's `generate.user`: the daemon then admits,
queues fairly and isolates the prefix cache per person behind the bridge, not per
bridge (one bridge used to share one connection's limit of 8 among everyone).

Sources, most trusted first: a header set by a reverse proxy that authenticated the
user (`--user-header`, only when configured: anyone can send a header to an open
bridge), then the OpenAI body's `user` field. A request that names nobody is a user of
its own: its limits and cache are its own, and only the daemon's overall
running-plus-queued bound applies across such requests.
"""

from __future__ import annotations

import hashlib
import itertools

from aiohttp import web

from axchat.protocol import v1

_anonymous = itertools.count(1)


def end_user(request: web.Request, body_user: str | None, user_header: str | None) -> str:
    named = request.headers.get(user_header, "") if user_header else ""
    source = "header" if named else "user"
    named = named or (body_user or "")
    if not named:
        return f"anon:{next(_anonymous)}"
    if len(named) > v1.MAX_USER_CHARS - 16:
        # Long names are hashed, not refused: the field is an opaque key to the daemon.
        named = hashlib.sha256(named.encode()).hexdigest()[:32]
    return f"{source}:{named}"
