"""Who may use the bridge, and under which credential its requests' end users are
named. With API keys: a bearer key, the name it is known by becoming the credential.
Without: only the bridge's own Unix user (`local_user.py`). `/health` and `/ready`
stay open for load balancers, whose health checks then need no copy of the key, and
the chat page's own files stay open because a browser cannot attach a header to a page
load; they hold no data, and every call the page makes carries the key."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from axchat.frontends.web.openai_errors import ApiError

OPEN_PATHS = frozenset({"/health", "/ready", "/"})
OPEN_PREFIXES = ("/static/",)
# request[CREDENTIAL]: what authenticated it, e.g. "key:billing-app" or "local".
CREDENTIAL = "axchat_credential"
LOCAL = "local"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_key_middleware(keys: Mapping[str, str]) -> Middleware:
    expected = [(name, b"Bearer " + key.encode()) for name, key in keys.items()]

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        matched = None
        for name, want in expected:
            # Constant time, and every key compared: neither a key's bytes nor which
            # key it was can be learnt from timings.
            if hmac.compare_digest(given, want) and matched is None:
                matched = name
        if matched is None and not is_open(request.path):
            raise ApiError(
                401,
                "missing or wrong API key: send it as `Authorization: Bearer KEY` (on the chat page: Settings → API key)",
                code="invalid_api_key",
            )
        request[CREDENTIAL] = f"key:{matched}"
        return await handler(request)

    return check_key
