"""Rounds of many clients that cancel, vanish mid-answer or finish: nothing may leak.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/churn.py --model DIR [--rounds 20] [--clients 32] [--seed 0]

One daemon is started on DIR. Each round, --clients clients connect at once, each on
its own connection, and send one chat request (a fresh prompt; up to --max-tokens
tokens, ignore_eos). Each then does one thing, drawn at random: reads its answer to the
end; cancels after its first token and reads to `done`; closes its connection right
after its first token; or closes it right after sending (while queued or prefilling).
After the round a watcher asks `status` until nothing runs or waits (with a deadline),
then records the KV sequences still held (a leak: nobody can ever free them), the
prefix-cache entries and the daemon's RSS.

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
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.stream import greedy

log = Log("churn")
SETTLE_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 120.0
ACTIONS = ("finish", "cancel", "vanish_streaming", "vanish_waiting")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("churn", __doc__)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64, help="most tokens a request asks for (default 64)")
    p.add_argument("--seed", type=int, default=0)
    cli.add_daemon_args(p)
    return p.parse_args(argv)


async def one_client(ctx: Any, socket: str, action: str, request: Any) -> str:
    """Run one client's part; returns how its request ended as the client saw it."""
    import zmq

    from axchat.protocol import v1

    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("ipc://" + socket)
    try:
        await sock.send_multipart(v1.encode(v1.Envelope(id="r"), request))
        if action == "vanish_waiting":
            return "vanished"
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not await sock.poll(int(left * 1000)):
                raise BenchError(f"a {action} client got nothing for {REPLY_TIMEOUT_S:.0f}s")
            raw_env, raw_body = await sock.recv_multipart()
            env, body = v1.decode_envelope(raw_env), v1.decode_daemon_body(raw_body)
            if env.id != "r":
                continue
            if isinstance(body, v1.Error):
                return f"error:{body.code}"
            if isinstance(body, v1.Done):
                return f"done:{body.finish_reason}"
            if isinstance(body, v1.Delta) and body.token_ids:
                if action == "vanish_streaming":
                    return "vanished"
                if action == "cancel":
                    await sock.send_multipart(v1.encode(v1.Envelope(id="r"), v1.Cancel()))
                    action = "cancelled"
    finally:
        sock.close(linger=0)


async def settle(watcher: Any) -> Any:
    """Status once nothing runs, waits or holds KV, or at the deadline."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        status = await watcher.status()
        idle = status.running == 0 and status.queued == 0 and status.kv_sequences == 0
        if idle or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)  # polling the daemon's own counts, with a deadline


async def churn(args: argparse.Namespace, socket: str) -> dict[str, Any]:
    import zmq.asyncio

    from axchat.aclient import AsyncClient
    from axchat.protocol import v1

    rng = random.Random(args.seed)
    ctx = zmq.asyncio.Context()
    watcher = AsyncClient(socket, connect_timeout_s=30.0)
    rounds: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    try:
        await watcher.hello()
        for r in range(args.rounds):
            jobs = []
            for c in range(args.clients):
                action = rng.choice(ACTIONS)
                request = v1.Generate(
                    messages=[v1.ChatMessage(role="user", content=filler(rng.randint(5, 60), f"round{r}.client{c}"))],
                    sampling=greedy(rng.randint(2, args.max_tokens)),
                )
                jobs.append(one_client(ctx, socket, action, request))
            t0 = time.monotonic()
            for outcome in await asyncio.gather(*jobs):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            status = await settle(watcher)
            rounds.append(
                {
                    "round": r + 1,
                    "s": rnd(time.monotonic() - t0),
                    "leaked_sequences": status.kv_sequences,
                    "still_running": status.running + status.queued,
                    "prefix_cache_entries": status.prefix_cache_entries,
                    "rss_mb": rnd(status.rss_bytes / 2**20),
                }
            )
            log(f"round {r + 1}: {rounds[-1]}")
    finally:
        await watcher.close()
        ctx.term()
    rss = [x["rss_mb"] for x in rounds]
    return {
        "rounds": args.rounds,
        "clients": args.clients,
        "outcomes": outcomes,
        "leaked_sequences": max(x["leaked_sequences"] for x in rounds),
        "stuck_requests": max(x["still_running"] for x in rounds),
        "rss_mb_per_round": rss,
        "rss_last_over_first": rnd(rss[-1] / rss[0], 3) if rss and rss[0] else None,
        "prefix_cache_entries_per_round": [x["prefix_cache_entries"] for x in rounds],
        "per_round": rounds,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    daemon = Daemon(args.model, args.serve_arg, log)
    t0 = time.monotonic()
    with serving(daemon, args.ready_timeout):
        result = asyncio.run(churn(args, daemon.socket))
    return {
        "bench": "churn",
        "model": model_info(Path(args.model)),
        "machine": machine(),
        **result,
        "tracebacks": daemon.final_log.count("Traceback"),
        "wall_s": rnd(time.monotonic() - t0),
        "daemon_warnings": daemon.warnings,
    }


if __name__ == "__main__":
    sys.exit(run_main("churn", bench, parse_args(sys.argv[1:])))
