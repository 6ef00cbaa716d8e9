"""Typed keys for what the bridge keeps on its aiohttp Application."""

from __future__ import annotations

from aiohttp import web

from axchat.frontends.web.daemon_link import DaemonLink
from axchat.frontends.web.metrics import BridgeMetrics

LINK = web.AppKey("link", DaemonLink)
METRICS = web.AppKey("metrics", BridgeMetrics)
# The header naming the end user (set by an authenticating proxy), or None.
USER_HEADER = web.AppKey("user_header", str | None)  # type: ignore[arg-type]
# Seconds a request body may take to arrive.
BODY_TIMEOUT = web.AppKey("body_timeout", float)
