"""One bridge serves many people: each HTTP request is admitted by the daemon as its own
end user (or as the `user` it names), so 30 concurrent streams through one bridge all
succeed with the daemon's default limits (8 per client would refuse 22 of them)."""

from __future__ import annotations

import asyncio

import openai
from web_bridge import BridgeProcess, bridge_fixture, model_name_fixture  # noqa: F401

STREAMS = 30


async def one_stream(client: openai.AsyncOpenAI, model: str, i: int, user: str | None) -> tuple[int, str | None]:
    extra = {"user": user} if user is not None else {}
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"stream {i}"}],
        max_tokens=4,
        stream=True,
        extra_body={"ignore_eos": True},
        **extra,  # type: ignore[arg-type]
    )
    pieces = 0
    finish = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    return pieces, finish


async def run_streams(bridge: BridgeProcess, model: str, users: list[str | None]) -> list[tuple[int, str | None]]:
    async with openai.AsyncOpenAI(base_url=bridge.url + "v1", api_key="unused", max_retries=0, timeout=120) as client:
        return await asyncio.gather(*(one_stream(client, model, i, user) for i, user in enumerate(users)))


def test_thirty_concurrent_streams_through_one_bridge_all_succeed(bridge: BridgeProcess, model_name: str) -> None:
    # Anonymous requests, and requests naming one of a few users: none is refused.
    users: list[str | None] = [None] * 20 + [f"person-{i % 5}" for i in range(10)]
    results = asyncio.run(run_streams(bridge, model_name, users))
    assert len(results) == STREAMS
    assert all(finish == "length" and pieces >= 1 for pieces, finish in results), results
