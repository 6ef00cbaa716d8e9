"""Every failure leaves as OpenAI's JSON error shape: our ApiErrors, aiohttp's own HTTP
errors (404 route, 405 method, 413 body too large) and, for bugs, a 500 whose details
go to the log, not to the client."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from axchat.frontends.web.errors import ApiError

log = logging.getLogger("axchat.web")


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
        return error_response(ApiError(exc.status, exc.reason, code=code))
    except ConnectionError:
        raise  # the client is gone; nobody to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal error in the web bridge", type="server_error", code="internal"))
