"""The bridge's aiohttp application: middlewares outermost first (the access log sees
the final status, errors become OpenAI JSON before it, the key check runs last), the
routes, and the daemon connection opened on start-up and closed on clean-up."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from axchat.frontends.web import ollama_routes, routes_openai, routes_ops, routes_page
from axchat.frontends.web.access_log import access_log_middleware
from axchat.frontends.web.appkeys import BODY_TIMEOUT, LINK, METRICS, USER_TRUST
from axchat.frontends.web.auth import bearer_key_middleware
from axchat.frontends.web.cross_site import cross_site_middleware
from axchat.frontends.web.daemon_link import DaemonLink
from axchat.frontends.web.end_user import NO_HEADER, UserTrust
from axchat.frontends.web.inflight import DEFAULT_MAX_REQUESTS, inflight_middleware
from axchat.frontends.web.local_user import own_user_middleware
from axchat.frontends.web.metrics import BridgeMetrics
from axchat.frontends.web.openai_errors import error_middleware

# Bodies above this are refused with 413 before they are read; the daemon's own frame
# limit (1 MiB by default) answers anything between.
MAX_BODY_BYTES = 8 << 20


def build_app(
    socket: str | None,
    api_keys: dict[str, str],
    *,
    user_trust: UserTrust = NO_HEADER,
    allowed_hosts: tuple[str, ...] = (),
    body_timeout_s: float,  # `axchat web --body-timeout` (serve.BODY_TIMEOUT_S)
    max_requests: int = DEFAULT_MAX_REQUESTS,  # `axchat web --max-requests`
) -> web.Application:
    middlewares: list[Middleware] = [access_log_middleware, error_middleware, inflight_middleware(max_requests)]
    if api_keys:
        middlewares.append(bearer_key_middleware(api_keys))
    else:
        # A key is what stops other users and other sites when there is one; without
        # one, the client's Unix user must be ours, and these cross-site checks.
        middlewares += [own_user_middleware(), cross_site_middleware(allowed_hosts)]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[METRICS] = BridgeMetrics()
    app[USER_TRUST] = user_trust
    app[BODY_TIMEOUT] = body_timeout_s

    async def daemon_link(app: web.Application) -> AsyncIterator[None]:
        # Made here, not above: the client's ZeroMQ context belongs to the running loop.
        app[LINK] = DaemonLink(socket)
        yield
        await app[LINK].close()

    app.cleanup_ctx.append(daemon_link)
    app.add_routes(routes_ops.routes)
    app.add_routes(routes_openai.routes)
    app.add_routes(ollama_routes.routes)
    app.add_routes(routes_page.routes)
    return app
