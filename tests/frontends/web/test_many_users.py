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


def held_through_one_bridge(tiny_model_dir, *serve_args: str, people: int = 16) -> tuple[int, list[openai.RateLimitError]]:  # type: ignore[no-untyped-def]
    """`people` held streams of as many users through one bridge: (admitted, the 429s)."""
    from conftest import HELD, DaemonProcess
    from web_bridge import started_bridge

    daemon = DaemonProcess(tiny_model_dir, "--max-running", "2", "--max-queued", "10", *serve_args).wait_ready()
    try:
        with started_bridge(daemon.socket) as bridge:

            async def run() -> tuple[int, list[openai.RateLimitError]]:
                async with openai.AsyncOpenAI(base_url=bridge.url + "v1", api_key="unused", max_retries=0, timeout=60) as client:
                    model = (await client.models.list()).data[0].id
                    opened = await asyncio.gather(
                        *(
                            client.chat.completions.create(
                                model=model,
                                messages=[{"role": "user", "content": f"held {i}"}],
                                stream=True,
                                user=f"person-{i}",
                                max_tokens=HELD["max_tokens"],  # type: ignore[arg-type]
                                extra_body={"ignore_eos": True},
                            )
                            for i in range(people)
                        ),
                        return_exceptions=True,
                    )
                    streams = [s for s in opened if isinstance(s, openai.AsyncStream)]
                    for stream in streams:  # closing each cancels its request on the daemon
                        await stream.close()
                    return len(streams), [e for e in opened if isinstance(e, openai.RateLimitError)]

            return asyncio.run(run())
    finally:
        assert daemon.stop() == 0, daemon.log_text()


def test_past_the_daemons_own_bound_and_only_then_a_429(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """16 held streams from 16 people through one bridge, against a daemon that takes 12
    live requests (2 running + 10 queued) and lets one connection have all 12: 12 are
    admitted (8 would be, if the bridge's one connection were still one client) and 4
    get 429 with Retry-After."""
    admitted, refused = held_through_one_bridge(tiny_model_dir, "--max-per-connection", "12")
    assert admitted == 12 and len(refused) == 4
    assert all(int(e.response.headers["retry-after"]) >= 1 for e in refused)


def test_one_connection_takes_at_most_three_quarters_of_the_daemon(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """By default one connection, a bridge with all its users, holds at most 3/4 of the
    daemon's 12 live requests: the last 3 stay for everyone else."""
    admitted, refused = held_through_one_bridge(tiny_model_dir)
    assert admitted == 9 and len(refused) == 7
    assert all("all its users together" in e.message for e in refused)
