"""The bridge's aiohttp application: middlewares outermost first (the access log sees
the final status, errors become OpenAI JSON before it, the key check runs last), the
routes, and the daemon connection opened on start-up and closed on clean-up."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from axchat.frontends.web import routes_openai, routes_ops, routes_page
from axchat.frontends.web.access_log import access_log_middleware
from axchat.frontends.web.appkeys import BODY_TIMEOUT, LINK, METRICS, USER_HEADER
from axchat.frontends.web.auth import bearer_key_middleware
from axchat.frontends.web.cross_site import cross_site_middleware
from axchat.frontends.web.daemon_link import DaemonLink
from axchat.frontends.web.inflight import DEFAULT_MAX_REQUESTS, inflight_middleware
from axchat.frontends.web.metrics import BridgeMetrics
from axchat.frontends.web.openai_errors import error_middleware

# Bodies above this are refused with 413 before they are read; the daemon's own frame
# limit (1 MiB by default) answers anything between.
MAX_BODY_BYTES = 8 << 20


def build_app(
    socket: str | None,
    api_key: str | None,
    *,
    user_header: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    body_timeout_s: float,  # `axchat web --body-timeout` (serve.BODY_TIMEOUT_S)
    max_requests: int = DEFAULT_MAX_REQUESTS,  # `axchat web --max-requests`
) -> web.Application:
    middlewares: list[Middleware] = [access_log_middleware, error_middleware, inflight_middleware(max_requests)]
    if api_key:
        middlewares.append(bearer_key_middleware(api_key))
    else:
        # The key is what stops other sites when there is one; without it, these checks.
        middlewares.append(cross_site_middleware(allowed_hosts))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[METRICS] = BridgeMetrics()
    app[USER_HEADER] = user_header
    app[BODY_TIMEOUT] = body_timeout_s

    async def daemon_link(app: web.Application) -> AsyncIterator[None]:
        # Made here, not above: the client's ZeroMQ context belongs to the running loop.
        app[LINK] = DaemonLink(socket)
        yield
        await app[LINK].close()

    app.cleanup_ctx.append(daemon_link)
    app.add_routes(routes_ops.routes)
    app.add_routes(routes_openai.routes)
    app.add_routes(routes_page.routes)
    return app
