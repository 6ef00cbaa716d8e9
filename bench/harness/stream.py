"""One streamed generate, timed on the client side: first token, every delta, done."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from harness.output import BenchError


class Timed:
    """A stream's first-token time and rate from its `sent`, `first`, `done_at`
    (time.monotonic() seconds) and `completion_tokens`."""

    sent: float
    first: float | None
    done_at: float | None
    completion_tokens: int

    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.sent) * 1e3

    def tok_s(self) -> float | None:
        """Completion tokens / (done - first token): a client's rate."""
        if self.first is None or self.done_at is None or self.done_at <= self.first:
            return None
        return self.completion_tokens / (self.done_at - self.first)


@dataclass
class Tally(Timed):
    """A stream's times and counts where nothing else of it is kept (an HTTP stream, a
    sequence of the bare loop): `chunks` is the pieces its tokens came in."""

    sent: float = 0.0
    first: float | None = None  # first piece with content
    done_at: float | None = None
    chunks: int = 0
    completion_tokens: int = 0


@dataclass
class Stream(Timed):
    """Client-side timeline of one streamed generate (time.monotonic() seconds)."""

    sent: float = 0.0
    first: float | None = None  # first delta carrying token ids
    done_at: float | None = None
    deltas: list[tuple[float, int]] = field(default_factory=list)  # (arrival, token ids in it)
    text: str = ""
    done: Any = None  # v1.Done

    @property
    def completion_tokens(self) -> int:
        return self.done.usage.completion_tokens if self.done is not None else sum(n for _, n in self.deltas)

    @property
    def chunks(self) -> int:
        """Deltas that carried token ids."""
        return len(self.deltas)

    def first_delta_tokens(self) -> int:
        """Token ids in the first delta: 1 when the first token spells text. Later deltas
        may carry several whatever the model (the device's runs of greedy steps)."""
        return self.deltas[0][1] if self.deltas else 0

    def gaps(self) -> list[tuple[float, float]]:
        """(end time, gap seconds) between consecutive deltas."""
        return [(b[0], b[0] - a[0]) for a, b in zip(self.deltas, self.deltas[1:], strict=False)]


async def stream(
    client: Any, request: Any, timeout_s: float, what: str, rec: Stream | None = None, on_delta: Any = None
) -> Stream:
    """Send request on client (an AsyncClient) and record its events until done. Raises
    BenchError on an error event, a failed done, or timeout_s without completion."""
    from axchat.protocol import v1

    rec = rec or Stream()
    rec.sent = time.monotonic()
    handle = await client.generate(request)

    async def consume() -> None:
        async for ev in handle.events(stall_timeout_s=timeout_s):
            now = time.monotonic()
            if isinstance(ev, v1.Delta):
                if ev.token_ids:
                    if rec.first is None:
                        rec.first = now
                    rec.deltas.append((now, len(ev.token_ids)))
                rec.text += ev.text
                if on_delta is not None:
                    on_delta(rec)
            elif isinstance(ev, v1.Done):
                rec.done_at, rec.done = now, ev
                if ev.error is not None:
                    raise BenchError(f"{what}: done with error {ev.error.code}: {ev.error.message}")
            elif isinstance(ev, v1.Error):
                raise BenchError(f"{what}: error {ev.code}: {ev.message}")

    try:
        await asyncio.wait_for(consume(), timeout_s)
    except TimeoutError:
        await handle.cancel()
        raise BenchError(f"{what}: not done after {timeout_s:.0f}s") from None
    if rec.done is None:
        raise BenchError(f"{what}: the stream ended without a done event")
    return rec


def greedy(max_tokens: int) -> Any:
    from axchat.protocol import v1

    return v1.Sampling(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def text_comes_late(recs: list[Stream]) -> bool:
    """Most streams' first delta held several tokens: the model picks ids the tokenizer
    cannot spell, so text (and client-side TTFT) comes late."""
    firsts = sorted(r.first_delta_tokens() for r in recs if r.deltas)
    return bool(firsts) and firsts[len(firsts) // 2] > 1
