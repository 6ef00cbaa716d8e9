"""Many clients on a batch-1 device: `axchat serve --device aipu` over the emulated
Metis card, 1 and then 4 clients each asking in turn. Prints one JSON object: per
request queue wait and TTFT, total throughput, and the daemon's own overhead next to
the device's time (the card serves one sequence at a time, so with 4 clients it
should be busy nearly all of the wall time)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from harness import cli
from harness.daemon import Daemon, serving
from harness.numbers import percentile, rnd
from harness.output import BenchError, Log, run_main

log = Log("aipu_emulated")
REPLY_TIMEOUT_S = 300.0


def one_client(socket: str, n_requests: int, max_tokens: int, index: int, out: list[dict[str, float]]) -> None:
    from axchat.client import Client
    from axchat.protocol import v1

    with Client(socket) as client:
        for r in range(n_requests):
            request = v1.Generate(
                messages=[v1.ChatMessage(role="user", content=f"Client {index}, question {r}: tell me about rivers.")],
                sampling=v1.Sampling(max_tokens=max_tokens, ignore_eos=True),
            )
            sent = time.perf_counter()
            first: float | None = None
            done: v1.Done | None = None
            for reply in client.generate(request, stall_timeout_s=REPLY_TIMEOUT_S):
                if isinstance(reply, v1.Delta) and first is None:
                    first = time.perf_counter()
                if isinstance(reply, v1.Error):
                    raise BenchError(f"request failed: {reply.code}: {reply.message}")
                if isinstance(reply, v1.Done):
                    done = reply
            if done is None:
                raise BenchError("the stream ended without a done event")
            wall_ms = (time.perf_counter() - sent) * 1e3
            s = done.stats
            out.append(
                {
                    "wall_ms": wall_ms,
                    "client_ttft_ms": ((first or time.perf_counter()) - sent) * 1e3,
                    "queue_ms": s.queue_ms,
                    "ttft_ms": s.ttft_ms,
                    "prefill_ms": s.prefill_ms,
                    "device_ms": s.generate_ms,  # prefill start to last token: the card's time
                    "overhead_ms": wall_ms - s.queue_ms - s.generate_ms,
                    "completion_tokens": s.completion_tokens,
                }
            )


def run_round(socket: str, clients: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    threads = [
        threading.Thread(target=one_client, args=(socket, per_client, max_tokens, i, results)) for i in range(clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(REPLY_TIMEOUT_S * per_client)
    wall_s = time.perf_counter() - t0
    if len(results) != clients * per_client:
        raise BenchError(f"{clients} clients: only {len(results)} of {clients * per_client} requests finished")

    def med(key: str) -> float | None:
        return rnd(percentile([r[key] for r in results], 50), 2)  # the 50th percentile is the median

    device_s = sum(r["device_ms"] for r in results) / 1e3
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": round(wall_s, 3),
        "tokens_per_s": round(sum(r["completion_tokens"] for r in results) / wall_s, 2),
        "median_queue_ms": med("queue_ms"),
        "max_queue_ms": round(max(r["queue_ms"] for r in results), 2),
        "median_ttft_ms": med("ttft_ms"),
        "median_client_ttft_ms": med("client_ttft_ms"),
        "median_device_ms": med("device_ms"),
        "median_overhead_ms": med("overhead_ms"),
        "device_busy_fraction": round(device_s / wall_s, 3),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("aipu_emulated", __doc__, model_help="local HF model directory (the emulator runs it)")
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=32)
    cli.add_daemon_args(p, serve_arg_help=None)
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    daemon = Daemon(args.model, ["--device", "aipu", "--aipu-runtime", "emulator"], log)
    daemon.env["AXCHAT_AIPU_EMULATOR_DIR"] = str(daemon.dir / "card")
    with serving(daemon, args.ready_timeout):
        one_client(daemon.socket, 1, 4, 99, [])  # warm-up, untimed
        rounds = [run_round(daemon.socket, n, args.requests_per_client, args.max_tokens) for n in (1, 4)]
    return {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests_per_client,
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
        "notes": "emulated card: device time is a CPU transformers forward; "
        "overhead = client wall - queue wait - device time (tokenize, transport, sampling hops)",
    }


if __name__ == "__main__":
    sys.exit(run_main("aipu_emulated", bench, parse_args(sys.argv[1:])))
