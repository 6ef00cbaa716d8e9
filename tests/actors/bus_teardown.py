"""The end of an in-process actor rig: each actor told to close and awaited, then the
ZeroMQ context terminated, which returns only once every socket is closed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import zmq.asyncio

from axchat.actors.mailbox import Actor, Bus, send_close


async def close_actors(bus: Bus, actors: Sequence[Actor], tasks: Sequence[asyncio.Task[None]]) -> None:
    for actor, task in zip(actors, tasks, strict=True):
        await send_close(bus, actor.name)
        await asyncio.wait_for(task, 10)


def assert_context_terminates(ctx: zmq.asyncio.Context) -> None:
    """A context that will not terminate means a socket leaked. On a daemon thread, so a
    leak fails the test instead of hanging the run."""
    term = threading.Thread(target=ctx.term, daemon=True)
    term.start()
    term.join(5)
    assert not term.is_alive(), "ZeroMQ context did not terminate: a socket leaked"
