"""Typed keys for what the bridge keeps on its aiohttp Application."""

from __future__ import annotations

from aiohttp import web

from axchat.frontends.web.daemon_link import DaemonLink
from axchat.frontends.web.end_user import UserTrust
from axchat.frontends.web.metrics import BridgeMetrics

LINK = web.AppKey("link", DaemonLink)
METRICS = web.AppKey("metrics", BridgeMetrics)
# Which header naming the end user is trusted, and from where.
USER_TRUST = web.AppKey("user_trust", UserTrust)
# Seconds a request body may take to arrive.
BODY_TIMEOUT = web.AppKey("body_timeout", float)
