"""Many clients on a batch-1 device: `axchat serve --device aipu` over the emulated
Metis card, 1 and then 4 clients each asking in turn. Prints one JSON object: per
request queue wait and TTFT, total throughput, and the daemon's own overhead next to
the device's time (the card serves one sequence at a time, so with 4 clients it
should be busy nearly all of the wall time).

With `--cards 1,2,4 --clients 8` it measures several emulated cards in one daemon
(`--devices all`) instead: each card takes `--step-ms` per run, asleep (it models a card's
timing, it measures no card). Each client holds one multi-turn conversation, a turn at a
time, for `--seconds`; tokens are counted as they arrive until then. Prints aggregate
tokens/s per card count and its ratio to one card, per-client max/min tokens, and how
often a later turn was served by the card that served the conversation's previous one."""

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


# ------------------------------------------------------------- several cards (--cards)

FIRST_TURN = "Client {i} here. Tell me a long story about rivers, bridges, the sea and the trains along the coast."
NEXT_TURN = "Go on, please."


def conversation_client(
    socket: str, index: int, max_tokens: int, start: float, deadline: float, out: dict[int, dict[str, Any]]
) -> None:
    """One conversation, a turn at a time, until `deadline`: tokens counted as they
    arrive before it; the turn in flight then is cancelled."""
    from axchat.client import Client
    from axchat.protocol import v1

    history = [v1.ChatMessage(role="user", content=FIRST_TURN.format(i=index))]
    tokens = 0
    turns: list[dict[str, Any]] = []
    with Client(socket) as client:
        while time.perf_counter() < start:
            time.sleep(0.001)
        while time.perf_counter() < deadline:
            request = v1.Generate(messages=history, sampling=v1.Sampling(max_tokens=max_tokens, ignore_eos=True))
            stream = client.generate(request, stall_timeout_s=REPLY_TIMEOUT_S)
            text = ""
            cancelled = False
            done: v1.Done | None = None
            for reply in stream:
                if isinstance(reply, v1.Delta):
                    text += reply.text
                    if time.perf_counter() < deadline:
                        tokens += len(reply.token_ids)
                elif isinstance(reply, v1.Error):
                    raise BenchError(f"client {index}: {reply.code}: {reply.message}")
                elif isinstance(reply, v1.Done):
                    done = reply
                if not cancelled and time.perf_counter() >= deadline:
                    stream.cancel()
                    cancelled = True
            if done is None:
                raise BenchError(f"client {index}: the stream ended without a done event")
            if done.finish_reason == "error":
                raise BenchError(f"client {index}: {done.error}")
            if done.finish_reason != "cancelled":
                turns.append({"device": done.stats.device, "cached_tokens": done.usage.cached_tokens})
            history += [v1.ChatMessage(role="assistant", content=text), v1.ChatMessage(role="user", content=NEXT_TURN)]
    out[index] = {"tokens": tokens, "turns": turns}


def cards_round(args: argparse.Namespace, cards: int) -> dict[str, Any]:
    from axchat.client import Client

    daemon = Daemon(args.model, ["--device", "aipu", "--aipu-runtime", "emulator", "--devices", "all"], log)
    daemon.env.update(
        AXCHAT_AIPU_EMULATOR_DIR=str(daemon.dir / "card"),
        AXCHAT_AIPU_EMULATOR_CARDS=",".join(f"metis-{i}:1:0=16" for i in range(cards)),
        AXCHAT_AIPU_EMULATOR_STEP_MS=args.step_ms,
    )
    out: dict[int, dict[str, Any]] = {}
    with serving(daemon, args.ready_timeout):
        one_client(daemon.socket, 1, 2, 99, [])  # warm-up, untimed
        start = time.perf_counter() + 0.5
        deadline = start + args.seconds
        threads = [
            threading.Thread(target=conversation_client, args=(daemon.socket, i, args.max_tokens, start, deadline, out))
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + REPLY_TIMEOUT_S)
        with Client(daemon.socket) as client:
            status = client.status()
    if len(out) != args.clients:
        raise BenchError(f"{cards} cards: only {len(out)} of {args.clients} clients finished")
    per_client = [out[i]["tokens"] for i in range(args.clients)]
    later = [
        (prev["device"], turn["device"], turn["cached_tokens"])
        for c in out.values()
        for prev, turn in zip(c["turns"], c["turns"][1:], strict=False)
    ]
    return {
        "cards": cards,
        "tokens": sum(per_client),
        "tokens_per_s": round(sum(per_client) / args.seconds, 2),
        "per_client_tokens": per_client,
        "per_client_max_over_min": round(max(per_client) / max(min(per_client), 1), 3),
        "later_turns": len(later),
        # One card: no placer, every turn is on it (stats.device is empty).
        "affinity_hit_rate": round(sum(a == b for a, b, _ in later) / len(later), 3) if later and cards > 1 else None,
        "later_turns_with_cached_tokens": sum(c > 0 for _, _, c in later),
        "placed_per_card": [d.requests_total for d in status.devices],
    }


def cards_bench(args: argparse.Namespace) -> dict[str, Any]:
    rounds = []
    for n in (int(c) for c in args.cards.split(",")):
        log(f"{n} card(s), {args.clients} clients, {args.seconds}s ...")
        rounds.append(cards_round(args, n))
    base = next((r["tokens_per_s"] for r in rounds if r["cards"] == 1), None)
    for r in rounds:
        r["ratio_vs_1_card"] = round(r["tokens_per_s"] / base, 3) if base else None
    return {
        "model": args.model,
        "clients": args.clients,
        "max_tokens_per_turn": args.max_tokens,
        "seconds": args.seconds,
        "card_step_ms": args.step_ms,
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
        "notes": "emulated cards: each run sleeps the card's time (AXCHAT_AIPU_EMULATOR_STEP_MS) on top of a "
        "CPU forward of the model; this models a card's timing, it measures no card. affinity_hit_rate: later "
        "turns served by the card that served the conversation's previous turn. The AIPU backend keeps no "
        "prefix cache (the card holds one sequence; a multi-token input restarts it), so cached_tokens stay 0 "
        "there; on backends with a prefix cache the same placement is what makes them > 0.",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("aipu_emulated", __doc__, model_help="local HF model directory (the emulator runs it)")
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--max-tokens", type=int, help="tokens per request (default 32; with --cards 8 a turn)")
    p.add_argument("--cards", help="several emulated cards in one daemon, e.g. 1,2,4 (the multi-card bench)")
    p.add_argument("--clients", type=int, default=8, help="--cards: clients, one conversation each")
    p.add_argument("--seconds", type=float, default=60.0, help="--cards: measured time per card count")
    p.add_argument("--step-ms", default="100", help="--cards: the card's time per run, DECODE[,PER_PROMPT_TOKEN] ms")
    cli.add_daemon_args(p, serve_arg_help=None)
    args = p.parse_args(argv)
    if args.max_tokens is None:
        args.max_tokens = 8 if args.cards else 32
    return args


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.cards:
        return cards_bench(args)
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
