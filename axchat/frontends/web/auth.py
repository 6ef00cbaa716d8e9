"""Bearer-key check. `/health` and `/ready` stay open for load balancers, whose health
checks then need no copy of the key, and the chat page's own files stay open because a
browser cannot attach a header to a page load; they hold no data, and every call the
page makes carries the key."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from axchat.frontends.web.openai_errors import ApiError

OPEN_PATHS = frozenset({"/health", "/ready", "/"})
OPEN_PREFIXES = ("/static/",)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_key_middleware(api_key: str) -> Middleware:
    expected = b"Bearer " + api_key.encode()

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_open(request.path):
            given = request.headers.get("Authorization", "").encode()
            # Constant time, so the key cannot be guessed byte by byte from timings.
            if not hmac.compare_digest(given, expected):
                raise ApiError(
                    401,
                    "missing or wrong API key: send it as `Authorization: Bearer KEY` (on the chat page: Settings → API key)",
                    code="invalid_api_key",
                )
        return await handler(request)

    return check_key
