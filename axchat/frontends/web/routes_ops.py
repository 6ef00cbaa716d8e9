"""Routes for operators: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web

from axchat.frontends.web.appkeys import LINK, METRICS
from axchat.frontends.web.openai_errors import ApiError
from axchat.protocol import v1

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """The bridge process answers; says nothing about the daemon (that is /ready)."""
    return web.json_response({"status": "ok"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """200 while this bridge can take new work now: the daemon answers, is not draining,
    and is not in the middle of loading its model again after a keep-alive unload. A load
    balancer's health check (deploy/haproxy.cfg) sends new conversations elsewhere
    meanwhile; requests already here are not affected."""
    try:
        status = await request.app[LINK].status()
    except ApiError as exc:
        return web.json_response({"status": "unavailable", "reason": exc.message}, status=503, headers=exc.headers())
    busy = _not_ready_because(status)
    if busy is not None:
        return web.json_response(
            {"status": "unavailable", "reason": busy}, status=503, headers={"Retry-After": str(NOT_READY_RETRY_S)}
        )
    # Open without the API key (auth.py), so it names nothing: the model is in /v1/models.
    return web.json_response({"status": "ready"})


# A drain or a reload lasts seconds: come back then.
NOT_READY_RETRY_S = 5


def _not_ready_because(status: v1.StatusReply) -> str | None:
    if status.state is v1.DaemonState.DRAINING:
        return "the daemon is shutting down"
    if not status.loaded and status.load_stage is not None:
        return f"the daemon is loading its model again ({status.load_stage})"
    return None


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    status: v1.StatusReply | None
    try:
        status = await request.app[LINK].status()
    except ApiError:
        status = None  # axchat_daemon_up 0 says it; the bridge's own figures still count
    return web.Response(body=request.app[METRICS].render(status).encode(), headers={"Content-Type": PROMETHEUS_TEXT})
