"""The asyncio client against a real daemon: concurrent requests on one socket."""

from __future__ import annotations

import asyncio

import pytest
from conftest import HELD, HELD_TOKENS, DaemonProcess, chat, short_socket_dir

from axchat.aclient import AsyncClient, DaemonUnavailable, connect
from axchat.protocol import v1


async def run(client: AsyncClient, prompt: str, n: int) -> tuple[str, v1.Done]:
    handle = await client.generate(chat(prompt, max_tokens=n, ignore_eos=True))
    text, done = "", None
    async for event in handle.events(stall_timeout_s=30):
        if isinstance(event, v1.Delta):
            text += event.text
        elif isinstance(event, v1.Done):
            done = event
    assert done is not None
    return text, done


async def test_concurrent_generates_share_one_socket(daemon: DaemonProcess) -> None:
    async with connect(daemon.socket) as client:
        alone = await run(client, "first", 12)
        both = await asyncio.gather(run(client, "first", 12), run(client, "second", 9))
        assert both[0][0] == alone[0]  # greedy: same text whether alone or not
        assert both[0][1].usage.completion_tokens == 12 and both[1][1].usage.completion_tokens == 9
        status = await client.status()
        assert status.model == daemon_model_name(daemon)


async def test_cancel_ends_the_stream(daemon: DaemonProcess) -> None:
    async with connect(daemon.socket) as client:
        handle = await client.generate(chat("go on", **HELD))
        events = handle.events(stall_timeout_s=30)
        first = await anext(events)
        assert isinstance(first, v1.Delta)
        await handle.cancel()
        rest = [e async for e in events]
        assert isinstance(rest[-1], v1.Done) and rest[-1].finish_reason == "cancelled"


async def test_no_daemon() -> None:
    client = AsyncClient(str(short_socket_dir() / "none.sock"), connect_timeout_s=0.5)
    try:
        with pytest.raises(DaemonUnavailable, match="axchat serve"):
            await client.hello()
    finally:
        await client.close()


def daemon_model_name(daemon: DaemonProcess) -> str:
    ready = next(line for line in daemon.lines if "ready:" in line)
    return ready.split("serving ")[1].split(" on ")[0]


async def test_async_client_pings_so_a_long_answer_survives_the_liveness_rule(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    d = DaemonProcess(tiny_model_dir, "--client-timeout", "0.5").wait_ready()
    try:
        async with connect(d.socket) as client:
            # Held: its first 50 decode steps take at least 1 s, twice the timeout; then
            # it runs to its end.
            handle = await client.generate(chat("long one", **HELD))
            deltas, done = 0, None
            async for event in handle.events(stall_timeout_s=30):
                deltas += isinstance(event, v1.Delta)
                if deltas == 50:
                    d.release_held()
                if isinstance(event, v1.Done):
                    done = event
            assert done is not None and done.finish_reason == "length"
            assert done.usage.completion_tokens == HELD_TOKENS
        assert "silent for over" not in d.log_text()
    finally:
        assert d.stop() == 0
