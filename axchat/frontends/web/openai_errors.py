"""Every failure the bridge answers, in OpenAI's shape, `{"error": {message, type, param,
code}}` (on Ollama's routes, Ollama's `{"error": message}`), with the HTTP status an
OpenAI client acts on (its SDKs pick the exception class by status alone): the error
type, the answer for each daemon error code, and the middleware that turns whatever a
handler raises into one (aiohttp's own 404/405/413 included; a bug becomes a 500 whose
details go to the log, not to the client)."""

from __future__ import annotations

import logging
import math
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from axchat.frontends.field_names import with_field_named
from axchat.frontends.web import structured
from axchat.protocol import v1

log = logging.getLogger("axchat.web")

# Seconds a client should wait when the daemon is gone or draining; a restart of the
# daemon on the tiny model takes a few seconds, a real model longer.
UNAVAILABLE_RETRY_S = 5.0

# The daemon's sampling settings sit under `sampling.`; OpenAI's are top level.
_SAMPLING_PREFIX = "sampling."
# The daemon's names for a constraint's fields, in OpenAI's words (a tool's: tools[i].function.x).
_CONSTRAINT_NAMES = {
    "constraint": "response_format",
    "constraint.schema": "response_format.json_schema.schema",
    "constraint.grammar": "response_format",
    "constraint.tools": "tools",
    "constraint.tool_choice": "tool_choice",
}


class ApiError(Exception):
    """An error answer. `code` is machine-readable; `retry_after_s` becomes Retry-After."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def daemon_unavailable(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="daemon_unavailable", retry_after_s=UNAVAILABLE_RETRY_S)


def from_error(error: v1.Error) -> ApiError:
    """The HTTP answer for a daemon's `error` frame."""
    return from_daemon(error.code, error.message, error.retry_after_s, param=error.param)


def from_daemon(
    code: v1.ErrorCode, message: str, retry_after_s: float | None = None, *, param: str | None = None
) -> ApiError:
    """The HTTP answer for a daemon error code; `param` is the daemon's `error.param`.
    Codes that only a broken bridge could cause (a bad frame, a duplicate id) are the
    bridge's fault: 500, not the caller's."""
    if code == "invalid_field":
        if param is not None and param.startswith(_SAMPLING_PREFIX):
            api_param = param.removeprefix(_SAMPLING_PREFIX)
            message = with_field_named(message, param, f"`{api_param}`")
            param = api_param
        elif param is not None and param.startswith("constraint"):
            named = structured.api_param(param, _CONSTRAINT_NAMES, "tools[{i}].function.{field}")
            message, param = with_field_named(message, param, f"`{named}`"), named
        return ApiError(400, message, code="invalid_value", param=param)
    if code == "context_overflow":
        return ApiError(400, message, code="context_length_exceeded", param=param or "messages")
    if code == "frame_too_large":
        return ApiError(413, message, code="request_too_large")
    if code == "unknown_model":
        return ApiError(404, message, code="model_not_found", param=param or "model")
    if code == "busy":
        return ApiError(429, message, type="rate_limit_error", code="busy", retry_after_s=retry_after_s or 1.0)
    if code == "daemon_restarted":
        # Gone mid-request: another try (here after a restart, or on another host behind a
        # balancer) can succeed, so 503, not 500.
        return ApiError(503, message, type="server_error", code=code, retry_after_s=UNAVAILABLE_RETRY_S)
    if code == "shutting_down":
        return ApiError(
            503, message, type="server_error", code="shutting_down", retry_after_s=retry_after_s or UNAVAILABLE_RETRY_S
        )
    return ApiError(500, message, type="server_error", code=code)


# Ollama's API answers under this prefix, its errors shaped `{"error": message}`.
OLLAMA_PREFIX = "/api/"


def error_response(error: ApiError, path: str = "") -> web.Response:
    """The answer in the shape of the API `path` belongs to: Ollama's or OpenAI's."""
    body = {"error": error.message} if path.startswith(OLLAMA_PREFIX) else error.body()
    return web.json_response(body, status=error.status, headers=error.headers())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
        return error_response(ApiError(exc.status, exc.reason, code=code), request.path)
    except ConnectionError:
        raise  # the client is gone; nobody to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            ApiError(500, "internal error in the web bridge", type="server_error", code="internal"), request.path
        )
