"""What a full KV pool does to the streams already answering: a prompt too large for the free cells, and streams that outgrow the pool together.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/kv_pool.py --model DIR [--context 2048] [--rounds 2]

One daemon on DIR whose running pool holds one context (`--context C --running-kv-mb 1`:
the memory plan never gives it less than one context, so it has C cells, rounded up to
256). Each round runs two scenes, greedy requests with `ignore_eos`:

- `big_prompt`: stream A (a prompt of 0.5 C tokens, then --tokens tokens) runs alone
  once, then again while client B, once A has 20 tokens, sends a prompt of 0.6 C tokens
  that cannot fit beside A. Reported: A's largest gap between two deltas and its tokens/s with B over
  alone (1.0: B costs A nothing while it waits), and B's first token after A's last
  (B waits for A's cells; it must not fail, nor stop A).
- `outgrow`: three streams whose prompts (0.15 C each) fit together with room to spare
  but whose replies (0.3 C tokens each) do not: the newest are parked in host memory
  until an older one ends. Reported: how many parks the daemon logged, each stream's
  largest gap between two deltas, the three's tokens/s together.

Any error fails the bench. Prints ONE JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from harness import cli
from harness.daemon import Daemon, serving
from harness.machine import machine, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.stream import Stream, greedy, stream

log = Log("kv_pool")
PARKED = "parked until an older one ends"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("kv_pool", __doc__)
    p.add_argument("--context", type=int, default=2048, help="context and pool size in tokens (default 2048)")
    p.add_argument("--tokens", type=int, default=256, help="stream A's tokens in big_prompt (default 256)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both scenes (default 2)")
    cli.add_daemon_args(p, timeout_help="seconds any one request may take (default 300)", timeout_s=300.0)
    return p.parse_args(argv)


def largest_gap_ms(rec: Stream) -> float:
    return max((gap for _, gap in rec.gaps()), default=0.0) * 1e3


async def prompt_of(client: Any, tokens: int, salt: str, timeout_s: float) -> Any:
    """A raw prompt of about `tokens` tokens, sized by the daemon's own count."""
    from axchat.protocol import v1

    words = tokens // 2  # English-ish filler takes 1.5-2 tokens a word
    for _ in range(4):
        text = filler(words, salt)
        probe = await stream(client, v1.Generate(prompt=text, sampling=greedy(1)), timeout_s, "sizing a prompt")
        got = probe.done.usage.prompt_tokens
        if abs(got - tokens) <= tokens // 50:
            break
        words = max(1, round(words * tokens / got))
    return text


async def big_prompt(args: argparse.Namespace, clients: list[Any], first: str, big: str) -> dict[str, Any]:
    from axchat.protocol import v1

    a_req = v1.Generate(prompt=first, sampling=greedy(args.tokens))
    alone = await stream(clients[0], a_req, args.timeout, "A alone")
    twenty = asyncio.Event()

    def count(rec: Stream) -> None:
        if sum(n for _, n in rec.deltas) >= 20:
            twenty.set()

    a_task = asyncio.create_task(stream(clients[0], a_req, args.timeout, "A beside B", on_delta=count))
    await asyncio.wait_for(twenty.wait(), args.timeout)
    b = await stream(clients[1], v1.Generate(prompt=big, sampling=greedy(8)), args.timeout, "B")
    a = await a_task
    if a.done_at is None or b.first is None:
        raise BenchError("a stream ended without its times")
    return {
        "a_gap_ms_alone": rnd(largest_gap_ms(alone)),
        "a_gap_ms_beside_b": rnd(largest_gap_ms(a)),
        "a_tok_s_ratio": rnd((a.tok_s() or 0.0) / (alone.tok_s() or 1.0), 3),
        "b_prompt_tokens": b.done.usage.prompt_tokens,
        "b_first_token_after_a_done_ms": rnd((b.first - a.done_at) * 1e3),
    }


async def outgrow(args: argparse.Namespace, clients: list[Any], prompts: list[str], daemon: Daemon) -> dict[str, Any]:
    from axchat.protocol import v1

    parked_before = daemon.log_text().count(PARKED)
    reply = int(0.3 * args.context)
    t0 = time.monotonic()
    recs = await asyncio.gather(
        *(
            stream(c, v1.Generate(prompt=p, sampling=greedy(reply)), args.timeout, f"stream {i}")
            for i, (c, p) in enumerate(zip(clients, prompts, strict=True))
        )
    )
    wall = time.monotonic() - t0
    return {
        "parks": daemon.log_text().count(PARKED) - parked_before,
        "gap_ms": [rnd(largest_gap_ms(r)) for r in recs],
        "tok_s": rnd(sum(r.completion_tokens for r in recs) / wall),
    }


async def run(args: argparse.Namespace, daemon: Daemon) -> dict[str, Any]:
    from axchat.aclient import AsyncClient

    clients = [AsyncClient(daemon.socket, connect_timeout_s=30.0) for _ in range(3)]
    try:
        for c in clients:
            await c.hello()
        rounds = []
        for r in range(args.rounds):
            log(f"round {r + 1}: sizing prompts")
            first = await prompt_of(clients[0], int(0.5 * args.context), f"a{r}", args.timeout)
            big = await prompt_of(clients[1], int(0.6 * args.context), f"b{r}", args.timeout)
            small = [await prompt_of(clients[0], int(0.15 * args.context), f"s{r}-{i}", args.timeout) for i in range(3)]
            log(f"round {r + 1}: big_prompt")
            scene_a = await big_prompt(args, clients, first, big)
            log(f"round {r + 1}: outgrow")
            scene_b = await outgrow(args, clients, small, daemon)
            rounds.append({"big_prompt": scene_a, "outgrow": scene_b})
    finally:
        for c in clients:
            await c.close()
    return {"rounds": rounds}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    serve = ["--context", str(args.context), "--running-kv-mb", "1", *args.serve_arg]
    daemon = Daemon(args.model, serve, log)
    t0 = time.monotonic()
    with serving(daemon, args.ready_timeout):
        result = asyncio.run(run(args, daemon))
    scenes = result["rounds"]
    return {
        "bench": "kv_pool",
        "model": model_info(Path(args.model)),
        "machine": machine(),
        "context": args.context,
        "a_tok_s_ratio": [s["big_prompt"]["a_tok_s_ratio"] for s in scenes],
        "a_gap_ms_beside_b": [s["big_prompt"]["a_gap_ms_beside_b"] for s in scenes],
        "a_gap_ms_alone": [s["big_prompt"]["a_gap_ms_alone"] for s in scenes],
        "outgrow_parks": [s["outgrow"]["parks"] for s in scenes],
        "outgrow_gap_ms_max": [max(s["outgrow"]["gap_ms"]) for s in scenes],
        **result,
        "wall_s": rnd(time.monotonic() - t0),
        "daemon_warnings": daemon.warnings,
    }


if __name__ == "__main__":
    sys.exit(run_main("kv_pool", bench, parse_args(sys.argv[1:])))
