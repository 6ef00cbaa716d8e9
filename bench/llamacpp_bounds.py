"""What bare llama.cpp itself allows for two daemon targets: a conversation's turn 10 against
turn 1, and the cost of handing each decode step between two threads.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/llamacpp_bounds.py --model DIR [--quant q8_0] [--threads 1] [--reps 5]

DIR is a Hugging Face Llama-family directory (converted and cached as the daemon would).

- `bare_turn10_over_turn1`: through the daemon's own `Engine` (same cell count, no
  daemon), the forward that feeds turn 1 of `bench/multiturn.py` (--turn1 new tokens at
  position 0) against turn 10's (--turn10-new tokens after --turn10-cached positions
  already in the KV, as the prefix cache leaves them). The daemon's turn-10 / turn-1 TTFT
  cannot be below this ratio.
- `hop_ms_p50` / `_p90`: an event loop (uvloop, as the daemon runs) sending a 12 ms
  blocking call to a one-thread executor and getting the result back, less the 12 ms:
  what a decode step's round trip through the daemon's device thread costs on this
  machine now, which a bare loop (one thread that never sleeps) does not pay.

Reps are interleaved so load drift hits both turns alike; medians. Prints ONE JSON
object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness import cli
from harness.machine import loadavg, machine, model_info
from harness.numbers import rnd
from harness.output import Log, run_main

log = Log("llamacpp_bounds")
HOP_WORK_S = 0.012  # about one batch-1 decode step of the SmolLM2 shape here
HOPS = 150


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("llamacpp_bounds", __doc__, model_help="local Llama-family model directory")
    p.add_argument("--quant", default="q8_0", help="weight type (default q8_0, the daemon's default)")
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each turn (default 5)")
    p.add_argument("--cells", type=int, default=23552, help="KV cells (default 23552: what the daemon sizes for the SmolLM2 shape; its status says)")
    p.add_argument("--turn1", type=int, default=157, help="turn 1's prompt tokens (multiturn.py's default: 157)")
    p.add_argument("--turn10-new", type=int, default=221, help="turn 10's uncached tokens (default 221)")
    p.add_argument("--turn10-cached", type=int, default=1909, help="turn 10's cached tokens (default 1909)")
    return p.parse_args(argv)


def turns(args: argparse.Namespace) -> dict[str, Any]:
    from axchat.actors.backends.llamacpp import load
    from axchat.actors.backends.llamacpp.engine import Engine

    gguf = load.gguf_for(cli.model_dir(args.model), args.quant, args.threads)
    engine = Engine(gguf, cells=args.cells, sequences=32, batch=load.BATCH_TOKENS, threads=args.threads, exact=args.quant == "f32")

    def feed(seq: int, start: int, n: int) -> float:
        tokens = [(i * 7 + seq) % 900 + 4 for i in range(start, start + n)]
        t0 = time.perf_counter()
        for at in range(0, n, load.BATCH_TOKENS):  # as the daemon splits a long feed
            k = min(load.BATCH_TOKENS, n - at)
            engine.run(tokens[at : at + k], list(range(start + at, start + at + k)), [seq] * k, [k - 1])
        return time.perf_counter() - t0

    first: list[float] = []
    tenth: list[float] = []
    try:
        for rep in range(args.reps):
            first.append(feed(0, 0, args.turn1))
            engine.forget(0)
            feed(1, 0, args.turn10_cached)  # the conversation so far, as the prefix cache holds it
            tenth.append(feed(1, args.turn10_cached, args.turn10_new))
            engine.forget(1)
            log(f"rep {rep + 1}: turn 1 {first[-1] * 1e3:.0f} ms, turn 10 {tenth[-1] * 1e3:.0f} ms; load {loadavg()}")
    finally:
        engine.close()
    t1, t10 = statistics.median(first), statistics.median(tenth)
    return {
        "bare_turn1_ms": rnd(t1 * 1e3),
        "bare_turn10_ms": rnd(t10 * 1e3),
        "bare_turn10_over_turn1": rnd(t10 / t1, 2),
        "per_token_cost_ratio": rnd((t10 / args.turn10_new) / (t1 / args.turn1), 2),
        "turn1_runs_ms": [rnd(x * 1e3) for x in first],
        "turn10_runs_ms": [rnd(x * 1e3) for x in tenth],
    }


async def hops() -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    with ThreadPoolExecutor(max_workers=1) as device:
        for _ in range(HOPS):
            t0 = time.perf_counter()
            await loop.run_in_executor(device, time.sleep, HOP_WORK_S)
            out.append((time.perf_counter() - t0 - HOP_WORK_S) * 1e3)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    out = turns(args)
    gaps = sorted(uvloop.run(hops()))
    out.update({
        "hop_ms_p50": rnd(statistics.median(gaps), 3),
        "hop_ms_p90": rnd(gaps[int(len(gaps) * 0.9)], 3),
        "context": {
            "quant": args.quant,
            "threads": args.threads,
            "turn1_tokens": args.turn1,
            "turn10_new_tokens": args.turn10_new,
            "turn10_cached_tokens": args.turn10_cached,
            "model": model_info(cli.model_dir(args.model)),
            "machine": machine(),
            "loadavg_end": loadavg(),
        },
    })
    return out


def main(argv: list[str] | None = None) -> int:
    return run_main("llamacpp_bounds", bench, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
