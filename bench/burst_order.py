"""A burst of prompts fed to the daemon's own llama.cpp Engine in the orders a device could take, on either KV layout.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/burst_order.py --model DIR [--clients 8] [--tokens 64] [--rounds 2]

DIR is a Hugging Face Llama-family directory (converted and cached as the daemon would).
No daemon, no sockets: N prompts of --prompt-tokens each arrive at once, then every
sequence decodes until it has --tokens tokens, in one of three orders:

- `together`: every prompt in one forward (what a device that cannot mix prompt and
  decode tokens in a forward does with a burst, and what llama-server does);
- `one_a_step`: the first prompt alone, then each next one whole in the decode step of
  those already running;
- `lead_group`: the device planner's order (`planner.lead_group`): a lead group in one
  forward, then the rest one a step as above.

Each order runs on both KV layouts of llama.cpp: `unified`, one pool of cells whose
attention every sequence's step spans, masked (the daemon's), and `streams`, one stream
of cells per sequence (llama-server `-np N`'s; `kv_unified` off), with the daemon's cell
count. Per order and layout: `ttft_p50_ms` (when each sequence's first token is known),
`tok_s` (all tokens over the whole run), `max_over_min` (the fastest sequence's tokens/s
from its first token on, over the slowest's), `full_step_ms` (a decode step of all N).
`decode_at_depth` compares the layouts' decode step of N sequences each holding
--depth positions.

With --threads 1 (the default) every time is the process's CPU time, so that other load
on the machine does not count (one thread has no barrier to wait at); with more threads
it is wall time. Orders and layouts are interleaved within each round; medians over
rounds. Prints ONE JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
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
    return p.parse_args(argv)


def orders(n: int) -> dict[str, list[int]]:
    """Each order as the sizes of its forwards' groups of new prompts."""
    from axchat.actors.device.planner import lead_group

    lead = lead_group(n, 0, 0)
    return {"together": [n], "one_a_step": [1] * n, "lead_group": [lead] + [1] * (n - lead)}


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

    def run(self, groups: list[int], salt: int) -> dict[str, Any]:
        n, args = self.args.clients, self.args
        for seq in range(n):
            self.engine.forget(seq)
        self.length = [0] * n
        made = [0] * n
        first = [0.0] * n
        done = [0.0] * n
        full_steps: list[float] = []
        t0 = self.clock()
        started = 0
        for size in groups:
            pieces = {s: [7] for s in range(started)}
            for s in range(started, started + size):
                pieces[s] = [(i * 7 + s * 13 + salt * 31) % 900 + 4 for i in range(args.prompt_tokens)]
            self.feed(pieces)
            now = self.clock() - t0
            for s in range(started + size):
                made[s] += 1
                if s >= started:
                    first[s] = now
            started += size
        while any(k < args.tokens for k in made):
            live = [s for s in range(n) if made[s] < args.tokens]
            before = self.clock()
            self.feed({s: [7] for s in live})
            now = self.clock() - t0
            if len(live) == n:
                full_steps.append(now - (before - t0))
            for s in live:
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

    gguf = load.gguf_for(cli.model_dir(args.model), args.quant, args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    cells = max(args.cells, args.clients * (args.depth + 16))
    engines = {
        layout: Engine(
            gguf, cells=cells, sequences=args.clients, batch=load.BATCH_TOKENS, threads=args.threads,
            exact=args.quant == "f32", unified=layout == "unified",
        )
        for layout in LAYOUTS
    }  # fmt: skip
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {layout: {} for layout in LAYOUTS}
    depth: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    try:
        for rnd_i in range(args.rounds):
            layouts = LAYOUTS if rnd_i % 2 == 0 else LAYOUTS[::-1]
            for layout in layouts:
                burst = Burst(engines[layout], args, clock)
                for name, groups in orders(args.clients).items():
                    res = burst.run(groups, rnd_i)
                    runs[layout].setdefault(name, []).append(res)
                    log(f"round {rnd_i + 1}, {layout}, {name}: ttft p50 {res['ttft_p50_ms']:.0f} ms, "
                        f"{res['tok_s']:.1f} tok/s, max/min {res['max_over_min']:.2f}; load {loadavg()}")  # fmt: skip
                depth[layout].append(burst.step_at_depth())
    finally:
        for engine in engines.values():
            engine.close()
    med = statistics.median
    out: dict[str, Any] = {}
    for layout in LAYOUTS:
        out[layout] = {
            name: {k: rnd(med([r[k] for r in rs]), 2) for k in rs[0] if rs[0][k] is not None}
            for name, rs in runs[layout].items()
        }
    uni = out["unified"]
    return {
        "ttft_ratio_lead_group_over_together": rnd(uni["lead_group"]["ttft_p50_ms"] / uni["together"]["ttft_p50_ms"], 3),
        "ttft_ratio_one_a_step_over_together": rnd(uni["one_a_step"]["ttft_p50_ms"] / uni["together"]["ttft_p50_ms"], 3),
        "tok_s_ratio_streams_over_unified": {
            name: rnd(out["streams"][name]["tok_s"] / uni[name]["tok_s"], 3) for name in uni
        },
        "decode_at_depth_ms": {layout: rnd(med(depth[layout]), 2) for layout in LAYOUTS},
        **out,
        "context": {
            "clients": args.clients, "prompt_tokens": args.prompt_tokens, "tokens": args.tokens,
            "rounds": args.rounds, "threads": args.threads, "clock": "cpu" if args.threads == 1 else "wall",
            "cells": cells, "depth": args.depth, "quant": args.quant, "orders": orders(args.clients),
            "model": model_info(cli.model_dir(args.model)), "machine": machine(), "loadavg_end": loadavg(),
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_main("burst_order", bench, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
