"""A burst of prompts fed to the daemon's own llama.cpp Engine in the orders a device could take, on either KV layout.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/burst_order.py --model DIR [--clients 8] [--tokens 64] [--rounds 2]
        [--orders NAME,...] [--layouts unified,streams] [--depth 1000 (0: skip)]

DIR is a Hugging Face Llama-family directory (converted and cached as the daemon would).
No daemon, no sockets: N prompts of --prompt-tokens each arrive at once, then every
sequence decodes until it has --tokens tokens. The orders feed the prompts in:

- `together`: every prompt in one forward (what a device that cannot mix prompt and
  decode tokens in a forward does with a burst, and what llama-server does);
- `one_a_step`: the first prompt alone, then each next one whole in the decode step of
  those already running;
- `lead_group`: the device planner's order (`planner.lead_group`): the smallest group
  that holds the median prompt in one forward, then the rest whole, together, in the
  first decode step;
- beside them, the candidates it was chosen among: the lead group or half the burst
  (`half_`) first, the rest then riding one a step, two a step, all together, the next
  one alone and then the rest (`half_one_then_rest`), or each in two chunks, one a step
  (`half_then_halves`); a lead group one larger (`lead_plus_one`).

`trade_off` lists, per order on the first layout run, its median first token over
`together`'s and its `max_over_min`.

Each order runs on both KV layouts of llama.cpp (or those --layouts names): `unified`, one pool of cells whose
attention every sequence's step spans, masked (the daemon's), and `streams`, one stream
of cells per sequence (llama-server `-np N`'s; `kv_unified` off), with the daemon's cell
count. Per order and layout: `ttft_p50_ms` (when each sequence's first token is known),
`tok_s` (all tokens over the whole run), `max_over_min` (the fastest sequence's tokens/s
from its first token on, over the slowest's), `full_step_ms` (a decode step of all N).
`decode_at_depth` compares the layouts' decode step of N sequences each holding
--depth positions (skipped with --depth 0).

With --threads 1 (the default) every time is the process's CPU time, so that other load
on the machine does not count (one thread has no barrier to wait at); with more threads
it is wall time. Orders and layouts are interleaved within each round; medians over
rounds. Prints ONE JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from harness import cli
from harness.machine import loadavg, machine, model_info
from harness.numbers import rnd
from harness.output import Log, run_main

log = Log("burst_order")
LAYOUTS = ("unified", "streams")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("burst_order", __doc__, model_help="local Llama-family model directory")
    p.add_argument("--clients", type=int, default=8, help="prompts in the burst (default 8)")
    p.add_argument("--prompt-tokens", type=int, default=66, help="tokens of each prompt (default 66, a chat question)")
    p.add_argument("--tokens", type=int, default=64, help="tokens each sequence makes (default 64)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every order on both layouts (default 2)")
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1: CPU time is measured)")
    p.add_argument("--depth", type=int, default=1000, help="positions per sequence for decode_at_depth (default 1000)")
    p.add_argument("--cells", type=int, default=11776, help="KV cells (default 11776: the daemon's for the SmolLM2 shape)")
    p.add_argument("--quant", default="q8_0", help="weight type (default q8_0, the daemon's default)")
    p.add_argument("--orders", help="comma-separated orders to run (default: all)")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated KV layouts (default: both)")
    return p.parse_args(argv)


# An order is the list of its forwards, each the prompt tokens it feeds per sequence;
# every sequence whose prompt is in (and that still has tokens to make) adds its decode
# token to every forward.
Order = list[dict[int, int]]


def grouped(sizes: list[int], n: int, prompt: int) -> Order:
    """Forwards that each take whole prompts: `sizes[i]` new ones in the i-th."""
    order: Order = []
    at = 0
    for size in (k for k in sizes if k > 0):
        order.append({s: prompt for s in range(at, at + size)})
        at += size
    assert at == n, (sizes, n)
    return order


def chunked(lead: int, pieces: int, n: int, prompt: int) -> Order:
    """A lead group in one forward, then each further prompt in `pieces` chunks, one a
    forward: the same prompt work spread over more decode steps."""
    order = grouped([lead], lead, prompt)
    for s in range(lead, n):
        cuts = [prompt * k // pieces for k in range(pieces + 1)]
        order += [{s: b - a} for a, b in itertools.pairwise(cuts)]
    return order


def then(lead: int, n: int, step: int) -> list[int]:
    """Group sizes: `lead` prompts (at most n), then the rest `step` a forward."""
    lead = min(lead, n)
    return [lead] + [min(step, n - k) for k in range(lead, n, step)]


def orders(n: int, prompt: int) -> dict[str, Order]:
    from axchat.actors.device.planner import lead_group

    lead, half = lead_group(n, 0, 0), (n + 1) // 2
    sizes = {
        "together": [n],
        "one_a_step": [1] * n,
        "lead_group": then(lead, n, n),  # the planner's: the rest ride in one step
        # Candidates beside the planner's, for the trade-off between them.
        "lead_one_a_step": then(lead, n, 1),
        "lead_plus_one": then(lead + 1, n, n),
        "half_then_rest": then(half, n, n),
        "half_then_one_a_step": then(half, n, 1),
        "half_then_two_a_step": then(half, n, 2),
        "half_one_then_rest": [half, *then(1, n - half, n)] if n > half else [n],
    }
    out = {name: grouped(groups, n, prompt) for name, groups in sizes.items()}
    out["half_then_halves"] = chunked(half, 2, n, prompt)  # each rider in two chunks, one a step
    return out


class Burst:
    """Runs one order on one engine, timing with `clock`."""

    def __init__(self, engine: Any, args: argparse.Namespace, clock: Callable[[], float]) -> None:
        self.engine, self.args, self.clock = engine, args, clock
        self.length = [0] * args.clients

    def feed(self, pieces: dict[int, list[int]]) -> None:
        # Ascending sequence ids: one ubatch for consecutive ones on the streams layout.
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        want: list[int] = []
        for seq in sorted(pieces):
            piece = pieces[seq]
            tokens += piece
            positions += range(self.length[seq], self.length[seq] + len(piece))
            seqs += [seq] * len(piece)
            want.append(len(tokens) - 1)
            self.length[seq] += len(piece)
        self.engine.run(tokens, positions, seqs, want)

    def run(self, order: Order, salt: int) -> dict[str, Any]:
        n, args = self.args.clients, self.args
        for seq in range(n):
            self.engine.forget(seq)
        self.length = [0] * n
        prompts = [[(i * 7 + s * 13 + salt * 31) % 900 + 4 for i in range(args.prompt_tokens)] for s in range(n)]
        fed = [0] * n  # prompt tokens in
        made = [0] * n
        first = [0.0] * n
        done = [0.0] * n
        full_steps: list[float] = []
        t0 = self.clock()
        forwards = iter(order)
        while any(k < args.tokens for k in made):
            live = [s for s in range(n) if fed[s] == args.prompt_tokens and made[s] < args.tokens]
            pieces = {s: [7] for s in live}
            for s, count in next(forwards, {}).items():
                pieces[s] = prompts[s][fed[s] : fed[s] + count]
                fed[s] += count
            before = self.clock()
            self.feed(pieces)
            now = self.clock() - t0
            if len(live) == n:
                full_steps.append(now - (before - t0))
            for s in pieces:
                if fed[s] < args.prompt_tokens:
                    continue  # a chunk: no token yet
                if made[s] == 0:
                    first[s] = now
                made[s] += 1
                if made[s] == args.tokens:
                    done[s] = now
        rates = [args.tokens / (d - f) for d, f in zip(done, first, strict=True)]
        return {
            "ttft_p50_ms": statistics.median(first) * 1e3,
            "tok_s": n * args.tokens / max(done),
            "max_over_min": max(rates) / min(rates),
            "full_step_ms": statistics.median(full_steps) * 1e3 if full_steps else None,
        }

    def step_at_depth(self) -> float:
        n, depth, batch = self.args.clients, self.args.depth, self.engine.batch_size
        for seq in range(n):
            self.engine.forget(seq)
        self.length = [0] * n
        for seq in range(n):
            prompt = [(i * 7 + seq * 13) % 900 + 4 for i in range(depth)]
            for at in range(0, depth, batch):
                self.feed({seq: prompt[at : at + batch]})
        steps = []
        for _ in range(16):
            before = self.clock()
            self.feed({s: [7] for s in range(n)})
            steps.append(self.clock() - before)
        return statistics.median(steps) * 1e3


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from axchat.actors.backends.llamacpp import load
    from axchat.actors.backends.llamacpp.engine import Engine

    layouts_run = [x for x in LAYOUTS if x in args.layouts.split(",")]
    every = orders(args.clients, args.prompt_tokens)
    chosen = {k: v for k, v in every.items() if not args.orders or k in args.orders.split(",") or k == "together"}
    gguf = load.gguf_for(cli.model_dir(args.model), args.quant, args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    cells = max(args.cells, args.clients * (args.depth + 16))
    engines = {
        layout: Engine(
            gguf, cells=cells, sequences=args.clients, batch=load.BATCH_TOKENS, threads=args.threads,
            exact=args.quant == "f32", unified=layout == "unified",
        )
        for layout in layouts_run
    }  # fmt: skip
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {layout: {} for layout in layouts_run}
    depth: dict[str, list[float]] = {layout: [] for layout in layouts_run}
    try:
        for rnd_i in range(args.rounds):
            for layout in layouts_run if rnd_i % 2 == 0 else layouts_run[::-1]:
                burst = Burst(engines[layout], args, clock)
                names = list(chosen) if rnd_i % 2 == 0 else list(chosen)[::-1]
                for name in names:
                    res = burst.run(chosen[name], rnd_i)
                    runs[layout].setdefault(name, []).append(res)
                    log(f"round {rnd_i + 1}, {layout}, {name}: ttft p50 {res['ttft_p50_ms']:.0f} ms, "
                        f"{res['tok_s']:.1f} tok/s, max/min {res['max_over_min']:.2f}; load {loadavg()}")  # fmt: skip
                if args.depth:
                    depth[layout].append(burst.step_at_depth())
    finally:
        for engine in engines.values():
            engine.close()
    med = statistics.median
    out: dict[str, Any] = {}
    for layout in layouts_run:
        out[layout] = {
            name: {k: rnd(med([r[k] for r in rs]), 2) for k in rs[0] if rs[0][k] is not None}
            for name, rs in runs[layout].items()
        }
    head = out[layouts_run[0]]
    together_ms = head["together"]["ttft_p50_ms"]
    result: dict[str, Any] = {
        # Per order on the first layout run (the daemon's, by default): its median first
        # token over all-together's, and its per-sequence spread.
        "trade_off": {
            name: {"ttft_over_together": rnd(r["ttft_p50_ms"] / together_ms, 3), "max_over_min": r["max_over_min"]}
            for name, r in head.items()
        },
    }
    if len(layouts_run) == 2:
        result["tok_s_ratio_streams_over_unified"] = {
            name: rnd(out["streams"][name]["tok_s"] / out["unified"][name]["tok_s"], 3) for name in out["unified"]
        }
    if args.depth:
        result["decode_at_depth_ms"] = {layout: rnd(med(depth[layout]), 2) for layout in layouts_run}
    return {
        **result,
        **out,
        "context": {
            "clients": args.clients, "prompt_tokens": args.prompt_tokens, "tokens": args.tokens,
            "rounds": args.rounds, "threads": args.threads, "clock": "cpu" if args.threads == 1 else "wall",
            "cells": cells, "depth": args.depth, "quant": args.quant,
            "orders": {name: [sum(f.values()) for f in order] for name, order in chosen.items()},
            "model": model_info(cli.model_dir(args.model)), "machine": machine(), "loadavg_end": loadavg(),
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_main("burst_order", bench, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
