"""What the speculative-decoding bench's workloads share: one timed greedy request with
its draft counts, requests sent at once, the chat and copy requests, and daemons started
to compute alike."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.daemon import Daemon
from harness.output import BenchError
from harness.stream import greedy


@dataclass
class Run:
    ids: list[int]
    tok_s: float
    proposed: int
    accepted: int
    ttft_ms: float = 0.0


async def one(socket: str, request: Any, timeout_s: float) -> Run:
    from axchat import aclient
    from axchat.protocol import v1

    async with aclient.connect(socket, connect_timeout_s=30.0) as client:
        handle = await client.generate(request)
        ids: list[int] = []
        first = None
        async for ev in handle.events(stall_timeout_s=timeout_s):
            if isinstance(ev, v1.Delta) and ev.token_ids:
                first = first or time.monotonic()
                ids += ev.token_ids
            elif isinstance(ev, v1.Done):
                if ev.error is not None:
                    raise BenchError(f"done with error {ev.error.code}: {ev.error.message}")
                elapsed = time.monotonic() - (first or time.monotonic())
                tok_s = len(ids) / elapsed if elapsed > 0 else 0.0
                return Run(ids, tok_s, ev.stats.draft_proposed, ev.stats.draft_accepted, ev.stats.ttft_ms)
            elif isinstance(ev, v1.Error):
                raise BenchError(f"error {ev.code}: {ev.message}")
    raise BenchError("stream ended without done")


async def concurrent(socket: str, requests: list[Any], timeout_s: float) -> float:
    """Aggregate tokens/s of `requests` sent at once, each on its own connection."""
    start = time.monotonic()
    runs = await asyncio.gather(*(one(socket, r, timeout_s) for r in requests))
    return sum(len(r.ids) for r in runs) / (time.monotonic() - start)


def chat(text: str, tokens: int) -> Any:
    from axchat.protocol import v1

    return v1.Generate(messages=[v1.ChatMessage(role="user", content=text)], sampling=greedy(tokens))


def copy_chat(passage: str, max_tokens: int) -> Any:
    """The copier's task: repeat the passage; the reply ends at its end-of-turn token."""
    from axchat.protocol import v1
    from axchat.testing.copy_training import COPY_INSTRUCTION

    sampling = v1.Sampling(temperature=0.0, max_tokens=max_tokens)
    return v1.Generate(messages=[v1.ChatMessage(role="user", content=COPY_INSTRUCTION + passage)], sampling=sampling)


def copy_passages() -> list[str]:
    """The corpus paragraphs held out of the copier's training."""
    from axchat.testing import copy_training, tiny_model

    return copy_training.held_out_passages(tiny_model.CORPUS_PATH.read_text(encoding="utf-8"))


def copy_shape(model: Path) -> str | None:
    """The shape a copy model was built in (its marker), None for another model."""
    from axchat.testing import copy_model

    marker = copy_model.read_marker(model)
    return marker.get("shape") if marker else None


def start_pinned(daemons: dict[str, Daemon], args: argparse.Namespace) -> str | None:
    """Start `daemons`, the first choosing its llama.cpp thread count as the default path
    does, the others given its choice: daemons compared with each other must compute
    alike (on a busy machine two of them may measure differently at load). The count, or
    None where `--serve-arg` set it."""
    first, *others = daemons.values()
    first.start(args.ready_timeout)
    chosen = first.threads()
    pinned = not any(a.startswith("--threads") for a in args.serve_arg) and chosen is not None
    for d in others:
        if pinned and chosen is not None:
            d.cmd += ["--threads", chosen.split()[0]]
        d.start(args.ready_timeout)
    return chosen if pinned else None
