"""Routes for operators: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web

from axchat.frontends.web.appkeys import LINK, METRICS
from axchat.frontends.web.errors import ApiError
from axchat.protocol import v1

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """The bridge process answers; says nothing about the daemon (that is /ready)."""
    return web.json_response({"status": "ok"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """200 once the daemon answers hello, i.e. its model is loaded and its socket bound."""
    try:
        welcome = await request.app[LINK].welcome()
    except ApiError as exc:
        return web.json_response({"status": "unavailable", "reason": exc.message}, status=503, headers=exc.headers())
    return web.json_response({"status": "ready", "model": welcome.model, "device": welcome.device})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    status: v1.StatusReply | None
    try:
        status = await request.app[LINK].status()
    except ApiError:
        status = None  # axchat_daemon_up 0 says it; the bridge's own figures still count
    return web.Response(body=request.app[METRICS].render(status).encode(), headers={"Content-Type": PROMETHEUS_TEXT})
