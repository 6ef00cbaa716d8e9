"""Keep-alive: what unloading an idle model frees, and what the next request pays.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/keepalive.py --model DIR [--rounds 3] [--keep-alive 2] [--tokens 8]

One daemon is started on DIR with `--keep-alive SECONDS`. Each round: a warm request
(so the model is loaded), the daemon's RSS from `status`; then `status` is polled until
it says unloaded, and the RSS read again; then one request on the unloaded model (it
waits through the reload: its time to first token, and the `loading` events it got),
straight away one more on the now loaded model (warm time to first token). Requests are
greedy, ignore_eos, --tokens tokens, the same prompt each time; the reloaded answer must
equal the warm one (it is checked).

RSS is the daemon's resident memory as `status` reports it (psutil). Time to first
token is client side, send to first delta.

Prints ONE JSON object on stdout; progress goes to stderr. Any failure exits 1 with a
message on stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import cli
from harness.daemon import Daemon, serving
from harness.machine import loadavg, machine, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main
from harness.stream import greedy

log = Log("keepalive")
PROMPT = "Explain in two sentences why the sky is blue."
UNLOAD_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 600.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("keepalive", __doc__)
    p.add_argument("--rounds", type=int, default=3, help="unload/reload cycles (default 3)")
    p.add_argument("--keep-alive", type=float, default=2.0, help="the daemon's keep-alive, seconds (default 2)")
    p.add_argument("--tokens", type=int, default=8, help="tokens per answer (default 8)")
    cli.add_daemon_args(p, serve_arg_help=None)
    return p.parse_args(argv)


async def timed(client: Any, tokens: int, what: str) -> dict[str, Any]:
    """One request: time to first delta, the loading events before it, the text."""
    from axchat.protocol import v1

    request = v1.Generate(messages=[v1.ChatMessage(role="user", content=PROMPT)], sampling=greedy(tokens))
    sent = time.monotonic()
    handle = await client.generate(request)
    first: float | None = None
    loading: list[v1.Loading] = []
    text = ""
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        async for ev in handle.events(stall_timeout_s=REQUEST_TIMEOUT_S):
            if isinstance(ev, v1.Loading):
                loading.append(ev)
            elif isinstance(ev, v1.Delta):
                first = first or time.monotonic()
                text += ev.text
            elif isinstance(ev, v1.Done):
                if ev.error is not None:
                    raise BenchError(f"{what}: done with error {ev.error.code}: {ev.error.message}")
            elif isinstance(ev, v1.Error):
                raise BenchError(f"{what}: error {ev.code}: {ev.message}")
    if first is None:
        raise BenchError(f"{what}: no delta came")
    return {
        "ttft_ms": (first - sent) * 1e3,
        "loading_events": len(loading),
        "stages": sorted({e.stage for e in loading}, key=[e.stage for e in loading].index),
        "text": text,
    }


async def wait_unloaded(client: Any) -> tuple[float, Any]:
    started = time.monotonic()
    while True:
        status = await client.status()
        if not status.loaded and status.load_stage is None:
            return time.monotonic() - started, status
        if time.monotonic() - started > UNLOAD_TIMEOUT_S:
            raise BenchError(f"the model was not unloaded within {UNLOAD_TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.05)  # a polling period, bounded above


async def rounds(daemon: Daemon, args: argparse.Namespace) -> list[dict[str, Any]]:
    from axchat.aclient import connect

    out = []
    async with connect(daemon.socket, connect_timeout_s=10) as client:
        for n in range(args.rounds):
            warm_before = await timed(client, args.tokens, f"round {n} warm-up")
            loaded = await client.status()
            if not loaded.loaded:
                raise BenchError("the model unloaded before its RSS could be read: use a longer --keep-alive")
            waited_s, unloaded = await wait_unloaded(client)
            reload = await timed(client, args.tokens, f"round {n} reload")
            warm = await timed(client, args.tokens, f"round {n} warm")
            if not reload["loading_events"]:
                raise BenchError(f"round {n}: the reloading request got no loading event")
            if not (reload["text"] == warm["text"] == warm_before["text"]):
                raise BenchError(f"round {n}: the answer after the reload differs from the warm one")
            row = {
                "rss_loaded_mb": loaded.rss_bytes / 2**20,
                "rss_unloaded_mb": unloaded.rss_bytes / 2**20,
                "unload_seen_after_s": waited_s,
                "reload_ttft_ms": reload["ttft_ms"],
                "warm_ttft_ms": warm["ttft_ms"],
                "loading_events": reload["loading_events"],
                "stages": reload["stages"],
            }
            log(f"round {n}: " + ", ".join(f"{k}={rnd(v) if isinstance(v, float) else v}" for k, v in row.items()))
            out.append(row)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    model = Path(args.model)
    daemon = Daemon(str(model), ["--keep-alive", f"{args.keep_alive:g}s"], log)
    with serving(daemon, args.ready_timeout):
        rows = asyncio.run(rounds(daemon, args))

    def median(key: str) -> float | None:
        return rnd(statistics.median(r[key] for r in rows))

    return {
        "bench": "keepalive",
        "model": model_info(model),
        "machine": machine(),
        "loadavg_after": loadavg(),
        "keep_alive_s": args.keep_alive,
        "tokens": args.tokens,
        "rounds": rows,
        "median": {
            key: median(key)
            for key in ("rss_loaded_mb", "rss_unloaded_mb", "reload_ttft_ms", "warm_ttft_ms", "loading_events")
        },
        "daemon_ready_s": rnd(daemon.ready_s),
        "daemon_warnings": daemon.warnings,
    }


if __name__ == "__main__":
    sys.exit(run_main("keepalive", bench, parse_args(sys.argv[1:])))
