"""One generate as the bridge runs it: the daemon's refusal becomes an HTTP error before
any byte is sent, the deltas stream out with their timings recorded, and leaving early
for any reason (the HTTP client hung up, a write failed) cancels the request on the
daemon so it stops spending the device on nobody."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import TracebackType

from axchat.aclient import DaemonUnavailable, GenerateHandle, RequestFailed
from axchat.frontends.web.daemon_link import DaemonLink
from axchat.frontends.web.metrics import BridgeMetrics
from axchat.frontends.web.openai_errors import ApiError, daemon_unavailable, from_error
from axchat.protocol import v1
from axchat.tool_call_pieces import merged_pieces

# Longest silence from the daemon inside one generate (a long prefill on a CPU, a wait
# for a device slot) before the request is given up as a daemon failure.
STALL_TIMEOUT_S = 300.0

log = logging.getLogger("axchat.web")


class Generation:
    def __init__(self, link: DaemonLink, request: v1.Generate, metrics: BridgeMetrics, endpoint: str) -> None:
        self._link = link
        self._request = request
        self._metrics = metrics
        self._endpoint = endpoint
        self._started = time.monotonic()
        self._handle: GenerateHandle | None = None
        self._events: AsyncIterator[v1.DaemonMessage] | None = None
        self._first: v1.DaemonMessage | None = None
        self.done: v1.Done | None = None

    async def __aenter__(self) -> Generation:
        """Sends the generate and waits for its first reply, so a refusal (busy, bad
        field, unknown model) is raised here as an ApiError."""
        try:
            self._handle = await self._link.client.generate(self._request)
            self._events = aiter(self._handle.events(stall_timeout_s=STALL_TIMEOUT_S))
            self._first = await anext(self._events)
        except DaemonUnavailable as exc:
            await self._close_events()
            self._metrics.count_request(self._endpoint, "daemon_unavailable")
            raise daemon_unavailable(str(exc)) from None
        except RequestFailed as exc:  # an error frame not tied to this request
            await self._close_events()
            self._metrics.count_request(self._endpoint, exc.error.code)
            raise from_error(exc.error) from None
        except BaseException:
            await self._abandon()
            raise
        if isinstance(self._first, v1.Error):
            self._metrics.count_request(self._endpoint, self._first.code)
            raise from_error(self._first)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.done is None:
            self._metrics.count_request(self._endpoint, _outcome_of(exc))
            await self._abandon()

    async def pieces(self) -> AsyncIterator[str | list[v1.ToolCallPiece]]:
        """The reply's text pieces, and its tool calls' pieces as lists (after all the
        text: a reply's calls end it); afterwards `done` is set (or ApiError raised when
        the daemon failed before any text). Deltas that arrived together come as one
        piece: a reply the client reads behind the daemon costs one event, not one a delta."""
        assert self._events is not None and self._first is not None and self._handle is not None
        last = self._started
        seen_text = False
        held: list[str] = []
        calls: list[v1.ToolCallPiece] = []
        event: v1.DaemonMessage | None = self._first
        while event is not None:
            if isinstance(event, v1.Delta):
                now = time.monotonic()
                if not seen_text and (event.text or event.tool_calls):
                    seen_text = True
                    self._metrics.ttft.observe(now - self._started)
                elif seen_text and event.token_ids:
                    self._metrics.itl.observe_many((now - last) / len(event.token_ids), len(event.token_ids))
                last = now
                if event.text:
                    held.append(event.text)
                if event.tool_calls:
                    calls += event.tool_calls
                if (held or calls) and not self._handle.backlog():
                    for piece in _together(held, calls):
                        yield piece
            elif isinstance(event, v1.Done):
                for piece in _together(held, calls):
                    yield piece
                self._finish(event)
                return
            elif isinstance(event, v1.Error):  # not expected after the first frame, but typed
                for piece in _together(held, calls):
                    yield piece
                raise from_error(event)
            try:
                event = await anext(self._events)
            except StopAsyncIteration:
                event = None
            except DaemonUnavailable as exc:
                raise daemon_unavailable(str(exc)) from None
            except RequestFailed as exc:  # the daemon went away mid-answer (killed, restarted)
                self._metrics.count_request(self._endpoint, exc.error.code)
                raise from_error(exc.error) from None
        raise ApiError(502, "the daemon ended the stream without a done frame", type="server_error", code="internal")

    def _finish(self, done: v1.Done) -> None:
        self.done = done
        self._metrics.count_usage(done.usage)
        self._metrics.count_request(self._endpoint, done.finish_reason)

    async def _abandon(self) -> None:
        if self._handle is not None and not self._handle.finished:
            try:
                # Shielded: this runs while aiohttp cancels the handler of a closed connection.
                await asyncio.shield(self._handle.cancel())
            except Exception as exc:  # the socket is gone too; the daemon cancels when it notices
                log.warning("could not cancel request %s on the daemon: %s", self._handle.request_id, exc)
        await self._close_events()

    async def _close_events(self) -> None:
        if self._events is not None:
            await self._events.aclose()  # type: ignore[attr-defined]
            self._events = None


def _together(held: list[str], calls: list[v1.ToolCallPiece]) -> list[str | list[v1.ToolCallPiece]]:
    """What arrived since the last piece went out, as at most two pieces; empties both."""
    out: list[str | list[v1.ToolCallPiece]] = []
    if held:
        out.append("".join(held))
        held.clear()
    if calls:
        out.append(merged_pieces(calls))
        calls.clear()
    return out


def _outcome_of(exc: BaseException | None) -> str:
    """Why a generation ended before its done frame, as a metrics label."""
    if isinstance(exc, ApiError):
        return exc.code or "error"
    if isinstance(exc, (asyncio.CancelledError, ConnectionError)):
        return "client_closed"
    return "error"
