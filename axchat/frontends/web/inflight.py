"""A cap on the HTTP requests the bridge handles at once. Past it a request gets 503 with
Retry-After before its body is read: a flood of connections cannot pile up unbounded
work (bodies of up to 8 MiB, daemon round trips, open streams) beside the users already
being served. `/health` stays outside the cap: it says the process lives, not that it
has room."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from axchat.frontends.web.openai_errors import ApiError

DEFAULT_MAX_REQUESTS = 256
RETRY_AFTER_S = 1.0


def inflight_middleware(limit: int) -> Middleware:
    live = 0

    @web.middleware
    async def cap(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal live
        if request.path == "/health":
            return await handler(request)
        if live >= limit:
            raise ApiError(
                503,
                f"the bridge is already handling {limit} requests; try again shortly (`axchat web --max-requests`)",
                type="server_error",
                code="server_busy",
                retry_after_s=RETRY_AFTER_S,
            )
        live += 1
        try:
            return await handler(request)
        finally:
            live -= 1

    return cap
