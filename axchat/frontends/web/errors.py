"""API errors in OpenAI's shape, `{"error": {message, type, param, code}}`, with the HTTP
status an OpenAI client acts on (its SDKs pick the exception class by status alone)."""

from __future__ import annotations

import math
import re
from typing import Any

from axchat.protocol import v1

# Seconds a client should wait when the daemon is gone or draining; a restart of the
# daemon on the tiny model takes a few seconds, a real model longer.
UNAVAILABLE_RETRY_S = 5.0

_SAMPLING_FIELD = re.compile(r"sampling\.(\w+)")


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


def from_daemon(code: v1.ErrorCode, message: str, retry_after_s: float | None = None) -> ApiError:
    """The HTTP answer for a daemon error code. Codes that only a broken bridge could
    cause (a bad frame, a duplicate id) are the bridge's fault: 500, not the caller's."""
    if code == "invalid_field":
        # The daemon names sampling fields `sampling.NAME`; OpenAI's are top level.
        found = _SAMPLING_FIELD.match(message)
        # ...and the message names them as the API caller wrote them.
        return ApiError(
            400, _SAMPLING_FIELD.sub(r"`\1`", message), code="invalid_value", param=found.group(1) if found else None
        )
    if code == "context_overflow":
        return ApiError(400, message, code="context_length_exceeded", param="messages")
    if code == "frame_too_large":
        return ApiError(413, message, code="request_too_large")
    if code == "unknown_model":
        return ApiError(404, message, code="model_not_found", param="model")
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
