"""One log line per HTTP request: who, what, status, bytes, seconds. A stream the client
closed is logged as such, since its 200 was sent before the end was known."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("axchat.web.access")


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status: int | str = "-"
    size = 0
    try:
        response = await handler(request)
        status = response.status
        size = response.body_length if response.prepared else len(getattr(response, "body", b"") or b"")
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionError):
        status = "closed-by-client"
        raise
    except Exception:
        status = 500
        raise
    finally:
        log.info(
            '%s "%s %s" %s %dB %.3fs',
            request.remote,
            request.method,
            request.path_qs,
            status,
            size,
            time.monotonic() - started,
        )
