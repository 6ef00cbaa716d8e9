"""The speculative bench's draft-model workload: `--speculate off` against the model with
a draft model (`--draft-model`, checked first with `serve --check`: a draft model of
another vocabulary is reported, not run) and, if asked, against the model as its own
draft model; on each request in turn, one interleaved run."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
from typing import Any

from harness.daemon import Daemon, bench_env
from harness.numbers import rnd
from harness.output import BenchError, Log
from harness.prompts import filler
from harness.speculation import Run, chat, one, start_pinned


def bench_draft(
    label: str, model: str, draft: str | None, requests: list[Any], args: argparse.Namespace, log: Log, *, self_draft: bool
) -> dict[str, Any]:
    """Per daemon name ("draft", "self"): `speedup` (the median over rounds and requests
    of tokens/s over off's) and `acceptance` (accepted over proposed tokens); each run's
    `tok_s`, `ttft_ms` (the draft model reads the prompt with the model) and `proposed`;
    `refused`, the check's line, where the draft model is not run."""
    out: dict[str, Any] = {"model": model, "draft_model": draft}
    serve = {"off": ["--speculate", "off"]}
    if draft is not None:
        check = subprocess.run(
            [sys.executable, "-m", "axchat", "serve", "--check", "--model", model, "--draft-model", draft],
            capture_output=True, text=True, env=bench_env(), timeout=args.ready_timeout,
        )  # fmt: skip
        if check.returncode == 0:
            serve["draft"] = ["--draft-model", draft]
        else:
            out["refused"] = (check.stderr.strip().splitlines() or ["(no output)"])[-1]
    if self_draft:
        serve["self"] = ["--draft-model", model]
    if len(serve) == 1:
        return out
    daemons = {name: Daemon(model, [*flags, *args.serve_arg], log, f"{label} {name}") for name, flags in serve.items()}
    try:
        out["threads_pinned"] = start_pinned(daemons, args)
        runs = asyncio.run(measure_draft({k: d.socket for k, d in daemons.items()}, requests, args, log, label))
    finally:
        for d in daemons.values():
            d.finish()
    for name in runs.keys() - {"off"}:
        proposed = sum(r.proposed for r in runs[name])
        out.setdefault("speedup", {})[name] = rnd(
            statistics.median(a.tok_s / b.tok_s for a, b in zip(runs[name], runs["off"], strict=True)), 3
        )
        out.setdefault("acceptance", {})[name] = rnd(sum(r.accepted for r in runs[name]) / proposed, 3) if proposed else None
    out["tokens"] = [len(r.ids) for r in runs["off"][: len(requests)]]
    out["tok_s"] = {name: [rnd(r.tok_s, 2) for r in rs] for name, rs in runs.items()}
    out["ttft_ms"] = {name: [rnd(r.ttft_ms, 1) for r in rs] for name, rs in runs.items()}
    out["proposed"] = {name: [r.proposed for r in rs] for name, rs in runs.items()}
    return out


async def measure_draft(
    sock: dict[str, str], requests: list[Any], args: argparse.Namespace, log: Log, label: str
) -> dict[str, list[Run]]:
    """Each round sends every request to every daemon, one after another (odd rounds in
    reverse order); every reply must equal off's to the same request."""
    for s in sock.values():
        await one(s, chat(filler(5), 8), args.timeout)  # warm-up, untimed
    runs: dict[str, list[Run]] = {name: [] for name in sock}
    reference: dict[int, list[int]] = {}
    for r in range(args.rounds):
        names = list(sock) if r % 2 == 0 else list(reversed(list(sock)))
        for i, request in enumerate(requests):
            for name in names:
                run = await one(sock[name], request, args.timeout)
                if reference.setdefault(i, run.ids) != run.ids:
                    raise BenchError(f"{label} draft {name}, request {i}: the reply differs from the other daemons'")
                runs[name].append(run)
                log(f"round {r + 1} request {i}: draft {name}: {run.tok_s:.2f} tok/s, drafts {run.accepted}/{run.proposed}")
    return runs
