"""Speculative decoding: tokens/s with proposals verified in the decode step, against none.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/speculative.py --shape smollm2=DIR --shape llama1b=DIR \
        [--tokens 128] [--rounds 2] [--c8-tokens 32] [--draft smollm2=DIR] [--draft-only]

Per shape (a model directory built with `python -m axchat.testing.tiny_model --shape ...`),
three daemons on the default path (llama.cpp, q8_0), each in its own socket directory:
`--speculate off`; the default (n-gram drafts); and the default with oracle drafts, the
test and benchmark hook `$AXCHAT_TEST_ORACLE_DRAFTS` (a JSON file read as each greedy
stream starts: an earlier greedy reply of the same request, a share p of its tokens
proposed wrong, chosen by a fixed seed).

Workloads, one interleaved run (each round runs every item once, odd rounds in reverse
order, so drift in machine load hits each alike; each ratio is the median over rounds
of that round's ratio):
- batch 1, the mechanism's bound: the oracle daemon at p = 0, 0.25, 0.5, 1, against the
  off daemon, on the same request (`--tokens` greedy tokens, ignore_eos);
- n-gram drafts on a copy-heavy request (a text to repeat, in the prompt), default
  against off; random-weight models do not copy, so what n-gram finds there is the
  model's own loops (its acceptance is reported beside);
- 8 concurrent streams: aggregate tokens/s, default against off.

Draft models (`--speculate draft`), in a run of their own per shape after those daemons
stopped: `--speculate off`, the model as its own draft model (`--draft-model` the same
directory: every guess right, each costing a step of the model itself: the cost side
of the mechanism, which the planner should decline once measured) and, with `--draft
KEY=DIR`, that draft model (checked first with `serve --check`: a draft model of another
vocabulary is reported, not run), on the batch-1 request. `--draft-only` runs just these.
Random weights guess another model's tokens almost never, so `draft_speedup` is what a
wrong draft model costs, not what a trained one gains.

tokens/s is client side: completion tokens / (done - first delta). Prints ONE JSON
object; progress goes to stderr; any failure exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import cli
from harness.daemon import Daemon, bench_env
from harness.machine import LoadAtStart, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.stream import greedy

log = Log("speculative")
ORACLE_ENV = "AXCHAT_TEST_ORACLE_DRAFTS"  # axchat.actors.device.drafts.ORACLE_ENV
CORRUPT = (0.0, 0.25, 0.5, 1.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/speculative.py", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--shape", action="append", required=True, help="KEY=DIR, e.g. smollm2=/tmp/m/smollm2 (repeatable)")
    p.add_argument("--tokens", type=int, default=128, help="greedy tokens of each batch-1 request (default 128)")
    p.add_argument("--c8-tokens", type=int, default=32, help="greedy tokens of each of the 8 streams (default 32)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the interleaved run (default 2)")
    p.add_argument("--draft", action="append", default=[], help="KEY=DIR: a draft model for shape KEY (repeatable)")
    p.add_argument("--draft-only", action="store_true", help="only the draft-model measurements")
    cli.add_daemon_args(p, timeout_help="seconds one request may take (default 600)")
    args = p.parse_args(argv)
    try:
        args.shapes = dict(item.split("=", 1) for item in args.shape)
        args.drafts = dict(item.split("=", 1) for item in args.draft)
    except ValueError:
        p.error("--shape and --draft take KEY=DIR")
    return args


@dataclass
class Run:
    ids: list[int]
    tok_s: float
    proposed: int
    accepted: int
    ttft_ms: float = 0.0


async def one(socket: str, request: Any, timeout_s: float) -> Run:
    from axchat import aclient
    from axchat.protocol import v1

    async with aclient.connect(socket, connect_timeout_s=30.0) as client:
        handle = await client.generate(request)
        ids: list[int] = []
        first = None
        async for ev in handle.events(stall_timeout_s=timeout_s):
            if isinstance(ev, v1.Delta) and ev.token_ids:
                first = first or time.monotonic()
                ids += ev.token_ids
            elif isinstance(ev, v1.Done):
                if ev.error is not None:
                    raise BenchError(f"done with error {ev.error.code}: {ev.error.message}")
                elapsed = time.monotonic() - (first or time.monotonic())
                tok_s = len(ids) / elapsed if elapsed > 0 else 0.0
                return Run(ids, tok_s, ev.stats.draft_proposed, ev.stats.draft_accepted, ev.stats.ttft_ms)
            elif isinstance(ev, v1.Error):
                raise BenchError(f"error {ev.code}: {ev.message}")
    raise BenchError("stream ended without done")


async def concurrent(socket: str, requests: list[Any], timeout_s: float) -> float:
    """Aggregate tokens/s of `requests` sent at once, each on its own connection."""
    start = time.monotonic()
    runs = await asyncio.gather(*(one(socket, r, timeout_s) for r in requests))
    return sum(len(r.ids) for r in runs) / (time.monotonic() - start)


def chat(text: str, tokens: int) -> Any:
    from axchat.protocol import v1

    return v1.Generate(messages=[v1.ChatMessage(role="user", content=text)], sampling=greedy(tokens))


def bench_shape(key: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    oracle_file = Path(tempfile.mkdtemp(prefix="axchat-oracle-")) / "drafts.json"
    daemons = {
        "off": Daemon(model, ["--speculate", "off", *args.serve_arg], log, f"{key} off"),
        "ngram": Daemon(model, list(args.serve_arg), log, f"{key} ngram"),
        "oracle": Daemon(model, list(args.serve_arg), log, f"{key} oracle", env={ORACLE_ENV: str(oracle_file)}),
    }
    try:
        for d in daemons.values():
            d.start(args.ready_timeout)
        return asyncio.run(measure(daemons, oracle_file, args))
    finally:
        for d in daemons.values():
            d.finish()


async def measure(daemons: dict[str, Daemon], oracle_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    sock = {k: d.socket for k, d in daemons.items()}
    question = chat(filler(30), args.tokens)
    copy = chat("Repeat this text exactly, twice: " + filler(60, salt="copy"), args.tokens)
    streams = [chat(filler(20, salt=f"c{i}"), args.c8_tokens) for i in range(8)]
    log("warm-up (untimed) and the oracle's reference reply")
    for s in sock.values():
        await one(s, chat(filler(5), 8), args.timeout)
        await concurrent(s, [chat(filler(5, salt=f"w{i}"), 4) for i in range(8)], args.timeout)
    reference = (await one(sock["off"], question, args.timeout)).ids

    def oracle(p: float) -> Callable[[], None]:
        return lambda: oracle_file.write_text(json.dumps({"reply": reference, "corrupt": p, "seed": 0}))

    items: list[tuple[str, str, Any, Callable[[], None] | None]] = [("off", "off", question, None)]
    items += [(f"p{p}", "oracle", question, oracle(p)) for p in CORRUPT]
    items += [("copy_off", "off", copy, None), ("copy_ngram", "ngram", copy, None)]
    results: dict[str, list[Run]] = {name: [] for name, *_ in items}
    agg: dict[str, list[float]] = {"off": [], "ngram": []}
    for r in range(args.rounds):
        for name, daemon, request, before in items if r % 2 == 0 else reversed(items):
            if before is not None:
                before()
            run = await one(sock[daemon], request, args.timeout)
            if name.startswith("p") and run.ids != reference:
                raise BenchError(f"{name}: the reply differs from the greedy reference")
            results[name].append(run)
            log(f"round {r + 1}: {name}: {run.tok_s:.2f} tok/s, drafts {run.accepted}/{run.proposed}")
        for daemon in ("off", "ngram") if r % 2 == 0 else ("ngram", "off"):
            agg[daemon].append(await concurrent(sock[daemon], streams, args.timeout))
            log(f"round {r + 1}: 8 streams {daemon}: {agg[daemon][-1]:.2f} tok/s")

    def ratio(name: str, base: str) -> float | None:
        """The median over rounds of each round's ratio: a round's two figures are
        minutes apart, rounds may be far apart in the machine's load."""
        return rnd(statistics.median(a.tok_s / b.tok_s for a, b in zip(results[name], results[base], strict=True)), 3)

    copy_runs = results["copy_ngram"]
    proposed = sum(run.proposed for run in copy_runs)
    out: dict[str, Any] = {f"speedup_p{int(p * 100)}": ratio(f"p{p}", "off") for p in CORRUPT}
    out["ngram_speedup"] = ratio("copy_ngram", "copy_off")
    out["agg_ratio_c8"] = rnd(statistics.median(a / b for a, b in zip(agg["ngram"], agg["off"], strict=True)), 3)
    out["acceptance_ngram"] = rnd(sum(run.accepted for run in copy_runs) / proposed, 3) if proposed else 0.0
    out["tok_s"] = {name: [rnd(run.tok_s, 2) for run in runs] for name, runs in results.items()}
    out["agg_tok_s_c8"] = {k: [rnd(v, 2) for v in vs] for k, vs in agg.items()}
    out["oracle_acceptance"] = {
        f"p{int(p * 100)}": rnd(sum(x.accepted for x in results[f"p{p}"]) / max(1, sum(x.proposed for x in results[f"p{p}"])), 3)
        for p in CORRUPT
    }
    return out


def bench_draft(key: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """The draft-model keys of one shape (module docstring)."""
    out: dict[str, Any] = {}
    serve = {"off": ["--speculate", "off"], "self": ["--draft-model", model]}
    draft = args.drafts.get(key)
    if draft is not None:
        draft = str(cli.model_dir(draft))
        check = subprocess.run(
            [sys.executable, "-m", "axchat", "serve", "--check", "--model", model, "--draft-model", draft],
            capture_output=True, text=True, env=bench_env(), timeout=args.ready_timeout,
        )  # fmt: skip
        if check.returncode == 0:
            serve["draft"] = ["--draft-model", draft]
        else:
            out["draft_refused"] = (check.stderr.strip().splitlines() or ["(no output)"])[-1]
    daemons = {name: Daemon(model, [*flags, *args.serve_arg], log, f"{key} {name}") for name, flags in serve.items()}
    try:
        for d in daemons.values():
            d.start(args.ready_timeout)
        runs = asyncio.run(measure_draft({k: d.socket for k, d in daemons.items()}, args))
    finally:
        for d in daemons.values():
            d.finish()
    keys = {"self": ("draft_self_speedup", "draft_self_acceptance"), "draft": ("draft_speedup", "acceptance_draft")}
    for name, (key_speedup, key_acceptance) in keys.items():
        if name in runs:
            proposed = sum(r.proposed for r in runs[name])
            out[key_speedup] = rnd(statistics.median(a.tok_s / b.tok_s for a, b in zip(runs[name], runs["off"], strict=True)), 3)
            out[key_acceptance] = rnd(sum(r.accepted for r in runs[name]) / proposed, 3) if proposed else None
    out["draft_tok_s"] = {name: [rnd(r.tok_s, 2) for r in rs] for name, rs in runs.items()}
    # The draft model reads each prompt with the model: in the time to the first token.
    out["draft_ttft_ms"] = {name: [rnd(r.ttft_ms, 1) for r in rs] for name, rs in runs.items()}
    out["draft_proposed"] = {name: [r.proposed for r in rs] for name, rs in runs.items()}
    return out


async def measure_draft(sock: dict[str, str], args: argparse.Namespace) -> dict[str, list[Run]]:
    question = chat(filler(30), args.tokens)
    for s in sock.values():
        await one(s, chat(filler(5), 8), args.timeout)  # warm-up, untimed
    runs: dict[str, list[Run]] = {name: [] for name in sock}
    reference: list[int] | None = None
    for r in range(args.rounds):
        for name in list(sock) if r % 2 == 0 else reversed(list(sock)):
            run = await one(sock[name], question, args.timeout)
            reference = reference or run.ids
            if run.ids != reference:
                raise BenchError(f"draft {name}: the reply differs from the other daemons'")
            runs[name].append(run)
            log(f"round {r + 1}: draft {name}: {run.tok_s:.2f} tok/s, drafts {run.accepted}/{run.proposed}")
    return runs


def bench(args: argparse.Namespace) -> dict[str, Any]:
    load = LoadAtStart()
    out: dict[str, Any] = {"tokens": args.tokens, "c8_tokens": args.c8_tokens, "rounds": args.rounds}
    for key, given in args.shapes.items():
        model = cli.model_dir(given)
        log(f"shape {key}: {model}")
        out[key] = {"model": model_info(model)}
        if not args.draft_only:
            out[key].update(bench_shape(key, str(model), args))
        out[key].update(bench_draft(key, str(model), args))
    out["machine"] = load.machine()
    out["notes"] = load.notes()
    return out


if __name__ == "__main__":
    raise SystemExit(run_main("speculative", bench, parse_args(None)))
