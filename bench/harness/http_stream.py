"""One streamed OpenAI chat completion over HTTP, timed on the client side, read the same
way whichever server answers; and the CPU time a process tree has used."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from harness.output import BenchError
from harness.stream import Tally


class HttpStream(Tally):
    """One HTTP stream: `chunks` are its SSE events with content."""


async def chat_stream(session: Any, url: str, body: dict[str, Any], what: str) -> HttpStream:
    """POST `body` (stream on, usage asked for) and read its events to `[DONE]`.
    Raises BenchError on an HTTP error, an error event or a stream without usage."""
    rec = HttpStream()
    rec.sent = time.monotonic()
    usage = None
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise BenchError(f"{what}: HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                rec.done_at = time.monotonic()
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"{what}: error event {event['error']}")
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    rec.chunks += 1
                    if rec.first is None:
                        rec.first = time.monotonic()
            if event.get("usage"):
                usage = event["usage"]
    if rec.done_at is None:
        raise BenchError(f"{what}: the stream ended without [DONE]")
    if usage is None:
        raise BenchError(f"{what}: no usage in the stream (stream_options.include_usage)")
    rec.completion_tokens = int(usage["completion_tokens"])
    return rec


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid`'s main thread alone (Linux /proc): for the
    daemon, its event loop, where every actor's Python runs."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and every live descendant (Linux /proc); a
    descendant that already exited is counted in its parent's `cutime` only when
    waited for, which the daemon's and the servers' children are not during a run."""
    tick = os.sysconf("SC_CLK_TCK")
    kids = _children()
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        todo += kids.get(p, [])
    return total
