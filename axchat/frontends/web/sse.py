"""Server-sent events as OpenAI streams them: one `data: {json}` event per chunk, and a
final `data: [DONE]`."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

_encoder = msgspec.json.Encoder()


class SseStream:
    def __init__(self) -> None:
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                # A reverse proxy (nginx) must pass each event on at once, not buffer them.
                "X-Accel-Buffering": "no",
            }
        )

    async def open(self, request: web.Request) -> None:
        await self.response.prepare(request)

    async def send(self, obj: Any) -> None:
        """Raises ConnectionError once the client has gone."""
        await self.send_json(_encoder.encode(obj))

    async def send_json(self, data: bytes) -> None:
        """An event of JSON already encoded."""
        await self.response.write(b"data: " + data + b"\n\n")

    async def close(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
