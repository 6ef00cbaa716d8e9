"""A request's body, read within the bridge's body timeout: a client trickling it a byte
at a time must not hold a connection (and its buffer) for as long as it likes."""

from __future__ import annotations

import asyncio

from aiohttp import web

from axchat.frontends.web.appkeys import BODY_TIMEOUT
from axchat.frontends.web.openai_errors import ApiError


async def read_body(request: web.Request) -> bytes:
    limit = request.app[BODY_TIMEOUT]
    try:
        async with asyncio.timeout(limit):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {limit:g}s", code="timeout") from None
