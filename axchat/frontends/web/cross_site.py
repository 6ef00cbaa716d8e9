"""What keeps other web sites off a keyless bridge: any page a user visits can make the
browser POST to http://127.0.0.1:8000, and a DNS-rebinding page can even read the answer
under its own name. So, without an API key: the `Host` must be a loopback address (or a
name the user allowed), a request from another origin (`Origin`, `Sec-Fetch-Site`) is
refused, and request bodies must be declared JSON (a cross-site form or `text/plain`
POST cannot set that without a CORS preflight, which the bridge never grants).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from axchat.frontends.web.openai_errors import ApiError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _hostname(host: str) -> str:
    """`Host` header value without its port, lower case, IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_name(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cross_site_middleware(allowed_hosts: Iterable[str] = ()) -> Middleware:
    extra = frozenset(_hostname(h) for h in allowed_hosts)

    def host_allowed(host: str) -> bool:
        name = _hostname(host)
        return is_loopback_name(name) or name in extra

    @web.middleware
    async def refuse_cross_site(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(request.host):
            raise ApiError(
                403,
                f"Host {request.host!r} is not this bridge's; use http://127.0.0.1 or allow the name with --allowed-host",
                code="host_not_allowed",
            )
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
            raise ApiError(403, f"cross-origin requests from {origin!r} are refused", code="cross_origin")
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise ApiError(403, "cross-site requests are refused", code="cross_origin")
        if request.method in BODY_METHODS and request.content_type != "application/json":
            raise ApiError(
                415,
                f"the body must be JSON (Content-Type: application/json), not {request.content_type!r}",
                code="not_json",
            )
        return await handler(request)

    return refuse_cross_site
