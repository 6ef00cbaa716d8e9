"""Many users at once: aggregate and per-client decode speed, and TTFT, for N concurrent clients.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/concurrency.py --model DIR [--clients 1,2,4,8] [--tokens 64] [--rounds 2]

One daemon is started on DIR (private socket directory). For each client count N, N
clients, each with its own connection (its own asyncio AsyncClient), send one greedy
request at the same moment (ignore_eos, exactly --tokens tokens) and stream it.

Per client: tokens/s = completion tokens / (done - first delta), and TTFT = send to the
first delta, client side (the daemon's own stats.ttft_ms is kept beside it).
Aggregate decode tokens/s = all completion tokens / (last done - earliest first delta).

The client counts are run --rounds times, in alternating order (1,2,4,8 then 8,4,2,1 ...)
so that drift in machine load hits every N alike; each N's figures are the median over
rounds (TTFT percentiles pool every client of every round).

Prints ONE JSON object on stdout; progress goes to stderr. Any failure exits 1 with a
message on stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from harness import cli
from harness.daemon import Daemon
from harness.machine import LoadAtStart, loadavg, model_info
from harness.numbers import percentile, rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.stream import Stream, greedy, stream, text_comes_late

log = Log("concurrency")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("concurrency", __doc__)
    cli.add_round_args(p, clients="1,2,4,8", rounds=2, rounds_help="times each client count is run")
    cli.add_daemon_args(p, timeout_help="seconds one round of N clients may take (default 600)")
    args = p.parse_args(argv)
    cli.check_round_args(p, args)
    return args


async def one_round(socket: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    from axchat.aclient import AsyncClient
    from axchat.protocol import v1

    clients = [AsyncClient(socket, connect_timeout_s=30.0) for _ in range(n)]
    try:
        await asyncio.gather(*(c.hello() for c in clients))
        # A different first word per client: no two prompts are the same text.
        reqs = [
            v1.Generate(messages=[v1.ChatMessage(role="user", content=filler(args.prompt_words, salt=f"client{i}"))], sampling=greedy(args.tokens))
            for i in range(n)
        ]
        recs = await asyncio.gather(*(stream(c, r, args.timeout, f"client {i + 1}/{n}") for i, (c, r) in enumerate(zip(clients, reqs, strict=True))))
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return summarize(recs, args.tokens)


def summarize(recs: list[Stream], tokens: int) -> dict[str, Any]:
    for i, r in enumerate(recs):
        if r.completion_tokens != tokens:
            raise BenchError(f"client {i + 1} got {r.completion_tokens} tokens, not {tokens}")
        if r.first is None:
            raise BenchError(f"client {i + 1} got no delta with token ids")
    rates = [r.tok_s() or 0.0 for r in recs]
    start = min(r.first for r in recs)  # type: ignore[type-var]
    end = max(r.done_at for r in recs)  # type: ignore[type-var]
    total = sum(r.completion_tokens for r in recs)
    return {
        "agg_tok_s": total / (end - start),
        "client_tok_s": rates,
        "ttft_ms": [r.ttft_ms() for r in recs],
        "daemon_ttft_ms": [r.done.stats.ttft_ms for r in recs],
        "daemon_queue_ms": [r.done.stats.queue_ms for r in recs],
        "tokens_per_delta": sum(len(r.deltas) for r in recs) and total / sum(len(r.deltas) for r in recs),
        "text_comes_late": text_comes_late(recs),
        "wall_s": end - min(r.sent for r in recs),
        "loadavg": loadavg(),
    }


async def run_all(socket: str, args: argparse.Namespace) -> dict[int, list[dict[str, Any]]]:
    from axchat import aclient
    from axchat.protocol import v1

    log("warm-up (untimed): one request of 8 tokens, then one with max(clients) at once")
    async with aclient.connect(socket, connect_timeout_s=30.0) as c:
        await stream(c, v1.Generate(messages=[v1.ChatMessage(role="user", content=filler(args.prompt_words))], sampling=greedy(8)), args.timeout, "warm-up")
    await one_round(socket, max(args.client_counts), argparse.Namespace(**{**vars(args), "tokens": 4}))
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in args.client_counts}
    for rnd_i in range(args.rounds):
        order = args.client_counts if rnd_i % 2 == 0 else list(reversed(args.client_counts))
        for n in order:
            t0 = time.monotonic()
            res = await one_round(socket, n, args)
            results[n].append(res)
            log(
                f"round {rnd_i + 1}/{args.rounds}, {n} clients: agg {res['agg_tok_s']:.1f} tok/s, "
                f"client {min(res['client_tok_s']):.1f}..{max(res['client_tok_s']):.1f} tok/s, "
                f"ttft max {max(res['ttft_ms']):.0f} ms, {time.monotonic() - t0:.1f}s, load {res['loadavg']}"
            )
    return results


def bench(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = cli.model_dir(args.model)
    info = model_info(model_dir)
    load = LoadAtStart()
    daemon = Daemon(str(model_dir), args.serve_arg, log)
    try:
        daemon.start(args.ready_timeout)
        results = asyncio.run(run_all(daemon.socket, args))
        threads = daemon.threads()
    finally:
        warnings = daemon.finish()

    med = statistics.median
    clients: dict[str, Any] = {}
    for n, runs in results.items():
        ttfts = [x for r in runs for x in r["ttft_ms"]]
        dttfts = [x for r in runs for x in r["daemon_ttft_ms"]]
        mins = [min(r["client_tok_s"]) for r in runs]
        maxs = [max(r["client_tok_s"]) for r in runs]
        clients[str(n)] = {
            "agg_tok_s": rnd(med([r["agg_tok_s"] for r in runs]), 2),
            "client_tok_s_min": rnd(med(mins), 2),
            "client_tok_s_max": rnd(med(maxs), 2),
            "client_max_over_min": rnd(med([b / a for a, b in zip(mins, maxs, strict=True) if a > 0] or [0.0]), 2),
            "ttft_ms_p50": rnd(percentile(ttfts, 50)),
            "ttft_ms_p95": rnd(percentile(ttfts, 95)),
            "daemon_ttft_ms_p50": rnd(percentile(dttfts, 50)),
            "daemon_ttft_ms_p95": rnd(percentile(dttfts, 95)),
            "tokens_per_delta": rnd(med([r["tokens_per_delta"] for r in runs]), 2),
            "agg_tok_s_runs": [rnd(r["agg_tok_s"], 2) for r in runs],
            "loadavg_1m_runs": [r["loadavg"][0] if r["loadavg"] else None for r in runs],
        }
    lo, hi = min(args.client_counts), max(args.client_counts)
    ratio = None
    if clients[str(lo)]["agg_tok_s"]:
        ratio = rnd(clients[str(hi)]["agg_tok_s"] / clients[str(lo)]["agg_tok_s"], 2)
    notes = []
    if any(r["text_comes_late"] for runs in results.values() for r in runs):
        notes.append(
            "first deltas carry several tokens: the model picks ids the tokenizer cannot decode, so text (and a delta) "
            "comes late; client-side TTFT and rates are unreliable. Use bench/visible_model.py for a same-shape copy"
        )
    notes += load.notes()
    return {
        "clients": clients,
        f"ratio_{hi}_vs_{lo}": ratio,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "model": info,
        "daemon_threads": threads,
        "serve_args": args.serve_arg,
        "machine": load.machine(),
        "daemon_log_warnings": warnings,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    return run_main("concurrency", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
