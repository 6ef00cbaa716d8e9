"""One client sending huge conversations back to back; another's short request's first token.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/head_of_line.py --model DIR [--probes 10] [--turns 120] [--kb 800]

One daemon is started on DIR. A "hog" client sends, back to back for the whole run, a
conversation of --turns messages totalling about --kb KB (under the 1 MiB frame limit;
far over the context, so the daemon trims it), each with max_tokens 2. Meanwhile a
"probe" client, on its own connection, sends requests of one short user message
with max_tokens 2, one after another (at least --probes, and until the hog has finished
--hog-requests of its own), and records the time from its send to its
first token (TTFT, client side). The hog's own tokenize_ms (from its `done` stats) says
how long the daemon spent on each huge request.

Prints ONE JSON object on stdout; progress goes to stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

from harness import cli
from harness.daemon import Daemon, serving
from harness.machine import machine, model_info
from harness.numbers import percentile, rnd
from harness.output import BenchError, Log, run_main
from harness.stream import Stream, greedy, stream

log = Log("head_of_line")
LETTERS = "etaoinshrdlucmfwypvbgkjqxz"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("head_of_line", __doc__)
    p.add_argument("--probes", type=int, default=10, help="short requests timed, at least (default 10)")
    p.add_argument("--hog-requests", type=int, default=5, help="probe until the hog has finished this many (default 5)")
    p.add_argument("--turns", type=int, default=120, help="messages in each huge conversation (default 120)")
    p.add_argument("--kb", type=int, default=800, help="size of each huge conversation in KB (default 800)")
    cli.add_daemon_args(p, timeout_help="seconds any one request may take (default 300)", timeout_s=300.0)
    return p.parse_args(argv)


def huge_conversation(turns: int, kb: int, salt: int) -> list[Any]:
    """Text of made-up words: a tokenizer caches the words it has seen, so repeated
    filler would make tokenizing look far cheaper than real conversations are."""
    from axchat.protocol import v1

    rng = random.Random(salt)
    per_message = kb * 1000 // turns
    msgs = []
    for i in range(turns - 1):
        role = "user" if i % 2 == 0 else "assistant"
        words: list[str] = []
        size = 0
        while size < per_message:
            word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 9)))
            words.append(word)
            size += len(word) + 1
        msgs.append(v1.ChatMessage(role=role, content=" ".join(words)[:per_message]))
    msgs.append(v1.ChatMessage(role="user", content="and the last question?"))
    return msgs


async def run(args: argparse.Namespace, socket: str) -> dict[str, Any]:
    from axchat.aclient import AsyncClient
    from axchat.protocol import v1

    hog_client = AsyncClient(socket, connect_timeout_s=30.0)
    probe_client = AsyncClient(socket, connect_timeout_s=30.0)
    stop = asyncio.Event()
    hog_tokenize_ms: list[float] = []
    hog_sizes: list[int] = []

    # Made before the clock starts: building 800 KB of text in this process's event
    # loop would delay the probe's own reading and inflate its figures.
    log("building the hog's conversations")
    convos = [huge_conversation(args.turns, args.kb, n) for n in range(args.hog_requests + 5)]

    async def hog() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            req = v1.Generate(messages=convos[(n - 1) % len(convos)], sampling=greedy(2))
            hog_sizes.append(len(v1.encode_body(req)))
            rec = await stream(hog_client, req, args.timeout, f"hog request {n}")
            hog_tokenize_ms.append(rec.done.stats.tokenize_ms)

    try:
        await hog_client.hello()
        await probe_client.hello()
        hog_task = asyncio.create_task(hog())
        # The hog's first huge request is on its way before the first probe.
        while not hog_sizes and not hog_task.done():
            await asyncio.sleep(0.01)
        ttfts: list[float] = []
        probe_tokenize_ms: list[float] = []
        probe_queue_ms: list[float] = []
        i = 0
        while i < args.probes or len(hog_tokenize_ms) < args.hog_requests:
            i += 1
            req = v1.Generate(messages=[v1.ChatMessage(role="user", content=f"probe {i}: hi")], sampling=greedy(2))
            rec: Stream = await stream(probe_client, req, args.timeout, f"probe {i}")
            ttft = rec.ttft_ms()
            if ttft is None:
                raise BenchError(f"probe {i} got no token")
            ttfts.append(ttft)
            probe_tokenize_ms.append(rec.done.stats.tokenize_ms)
            probe_queue_ms.append(rec.done.stats.queue_ms)
            if hog_task.done():
                hog_task.result()
        stop.set()
        await asyncio.wait_for(hog_task, args.timeout)
    finally:
        await hog_client.close()
        await probe_client.close()
    return {
        "probe_ttft_ms": {"max": rnd(max(ttfts)), "p50": rnd(percentile(ttfts, 50)), "all": [rnd(t) for t in ttfts]},
        "probe_tokenize_ms_max": rnd(max(probe_tokenize_ms)),
        "probe_queue_ms_max": rnd(max(probe_queue_ms)),
        "hog_requests": len(hog_tokenize_ms),
        "hog_frame_bytes": max(hog_sizes),
        "hog_tokenize_ms": {"max": rnd(max(hog_tokenize_ms, default=0.0)), "p50": rnd(percentile(hog_tokenize_ms, 50))},
        "target_probe_ttft_ms": 1000,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    daemon = Daemon(args.model, args.serve_arg, log)
    t0 = time.monotonic()
    with serving(daemon, args.ready_timeout):
        result = asyncio.run(run(args, daemon.socket))
    return {
        "bench": "head_of_line",
        "model": model_info(Path(args.model)),
        "machine": machine(),
        "turns": args.turns,
        "kb": args.kb,
        **result,
        "wall_s": rnd(time.monotonic() - t0),
        "daemon_warnings": daemon.warnings,
    }


if __name__ == "__main__":
    sys.exit(run_main("head_of_line", bench, parse_args(sys.argv[1:])))
