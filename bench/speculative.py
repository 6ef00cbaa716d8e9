"""Speculative decoding: tokens/s with proposals verified in the decode step, against none.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/speculative.py --shape smollm2=DIR --shape llama1b=DIR \
        [--tokens 128] [--rounds 2] [--c8-tokens 32] [--draft smollm2=DIR] [--draft-only]
        [--copy-model KEY=DIR] [--no-copy | --copy-only]

Per shape (a model directory built with `python -m axchat.testing.tiny_model --shape ...`),
three daemons on the default path (llama.cpp, q8_0), each in its own socket directory:
`--speculate off`; the default (n-gram drafts); and the default with oracle drafts, the
test and benchmark hook `$AXCHAT_TEST_ORACLE_DRAFTS` (a JSON file read as each greedy
stream starts: an earlier greedy reply of the same request, a share p of its tokens
proposed wrong, chosen by a fixed seed).

The daemons compared with each other run on one llama.cpp thread count: the first
measures at load as the default path does, the others are given its choice.

Workloads, one interleaved run (each round runs every item once, odd rounds in reverse
order, so drift in machine load hits each alike; each ratio is the median over rounds
of that round's ratio):
- batch 1, the mechanism's bound: the oracle daemon at p = 0, 0.25, 0.5, 1, against the
  off daemon, on the same request (`--tokens` greedy tokens, ignore_eos);
- n-gram drafts on a request to repeat a text, default against off, on the random model
  (`ngram_speedup_nocopy`: it does not copy, so this is what the mode costs when it finds
  little) and on a copy model of the same shape (`ngram_speedup`, `acceptance_ngram`):
  `axchat.testing.copy_model`, a small Llama trained to repeat a passage from its prompt,
  embedded exactly into the shape, so a step costs what the shape's does; its requests
  are the corpus paragraphs held out of its training, replies ending at end-of-turn;
- 8 concurrent streams: aggregate tokens/s, default against off.

Draft models (`--speculate draft`), in a run of their own per shape after those daemons
stopped (`--draft-only`: only this), on the copy model and the copy passages: `--speculate
off` against the copy model with its draft model (`draft_speedup`, `acceptance_draft`:
`copy_model.ensure_draft`, the same copier at its own small size with the shape's
vocabulary, so a trained pair that agrees) and against the copy model as its own draft
model (`draft_self_speedup`, `draft_self_acceptance`: every guess right, each costing a
step of the model itself: the cost side, which the planner should decline once
measured). With `--draft KEY=DIR`, also the `--shape` model against that draft model on
the batch-1 request (`draft_speedup_given`, `acceptance_draft_given`; checked first with
`serve --check`: a draft model of another vocabulary is reported, not run): with random
weights, what a draft model that never agrees costs; with a real pair, what it gains.
Every reply must equal `off`'s.

tokens/s is client side: completion tokens / (done - first delta). Prints ONE JSON
object; progress goes to stderr; any failure exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import cli
from harness.daemon import Daemon
from harness.draft_models import bench_draft
from harness.machine import LoadAtStart, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.speculation import Run, chat, concurrent, copy_chat, copy_passages, copy_shape, one, start_pinned

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
    p.add_argument("--copy-model", action="append", default=[], help="KEY=DIR, the copy model of a shape "
                   "(default: `python -m axchat.testing.copy_model`'s for the shape's random model, built and cached on first use)")
    p.add_argument("--copy-tokens", type=int, default=256, help="most tokens of a copy reply (default 256)")
    p.add_argument("--no-copy", action="store_true", help="skip the copy-heavy workload")
    p.add_argument("--copy-only", action="store_true", help="only the copy-heavy workload")
    cli.add_daemon_args(p, timeout_help="seconds one request may take (default 600)")
    args = p.parse_args(argv)
    try:
        args.shapes = dict(item.split("=", 1) for item in args.shape)
        args.drafts = dict(item.split("=", 1) for item in args.draft)
        args.copy_models = dict(item.split("=", 1) for item in args.copy_model)
    except ValueError:
        p.error("--shape, --draft and --copy-model take KEY=DIR")
    return args


def bench_shape(key: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    oracle_file = Path(tempfile.mkdtemp(prefix="axchat-oracle-")) / "drafts.json"
    daemons = {
        "off": Daemon(model, ["--speculate", "off", *args.serve_arg], log, f"{key} off"),
        "ngram": Daemon(model, list(args.serve_arg), log, f"{key} ngram"),
        "oracle": Daemon(model, list(args.serve_arg), log, f"{key} oracle", env={ORACLE_ENV: str(oracle_file)}),
    }
    try:
        threads = start_pinned(daemons, args)
        return {"threads_pinned": threads, **asyncio.run(measure(daemons, oracle_file, args))}
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
    out["ngram_speedup_nocopy"] = ratio("copy_ngram", "copy_off")
    out["agg_ratio_c8"] = rnd(statistics.median(a / b for a, b in zip(agg["ngram"], agg["off"], strict=True)), 3)
    out["acceptance_ngram_nocopy"] = rnd(sum(run.accepted for run in copy_runs) / proposed, 3) if proposed else 0.0
    out["tok_s"] = {name: [rnd(run.tok_s, 2) for run in runs] for name, runs in results.items()}
    out["agg_tok_s_c8"] = {k: [rnd(v, 2) for v in vs] for k, vs in agg.items()}
    out["oracle_acceptance"] = {
        f"p{int(p * 100)}": rnd(sum(x.accepted for x in results[f"p{p}"]) / max(1, sum(x.proposed for x in results[f"p{p}"])), 3)
        for p in CORRUPT
    }
    return out


def copier_for(key: str, model: Path, args: argparse.Namespace) -> Path | None:
    """The copy model of `key`: `--copy-model`, else the copier of the random model's
    shape (trained on first use, minutes, then cached), else none."""
    from axchat.testing import copy_model

    if key in args.copy_models:
        return cli.model_dir(args.copy_models[key])
    shape = model_info(model)["shape"]
    if shape not in copy_model.COPY_SHAPES:
        return None
    log(f"{key}: the copy model of shape {shape} (trained once, then cached)")
    return copy_model.ensure(shape=shape, progress=lambda line: log(f"{key} copier: {line}"))


def bench_copy(key: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """n-gram drafts on a model that copies: the default against `--speculate off`."""
    daemons = {
        "off": Daemon(str(model), ["--speculate", "off", *args.serve_arg], log, f"{key} copier off"),
        "ngram": Daemon(str(model), list(args.serve_arg), log, f"{key} copier ngram"),
    }
    try:
        threads = start_pinned(daemons, args)
        info = {**model_info(model), "shape": copy_shape(model)}
        return {"model": info, "threads_pinned": threads, **asyncio.run(measure_copy(daemons, model, args))}
    finally:
        for d in daemons.values():
            d.finish()


async def measure_copy(daemons: dict[str, Daemon], model: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tokenizers import Tokenizer

    passages = copy_passages()
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    wanted = [tokenizer.encode(p, add_special_tokens=False).ids for p in passages]
    requests = [copy_chat(p, args.copy_tokens) for p in passages]
    sock = {k: d.socket for k, d in daemons.items()}
    log("copier warm-up (untimed)")
    for s in sock.values():
        await one(s, chat(filler(5), 8), args.timeout)
    runs: dict[str, list[Run]] = {"off": [], "ngram": []}
    for r in range(args.rounds):
        order = list(enumerate(requests)) if r % 2 == 0 else list(reversed(list(enumerate(requests))))
        for i, request in order:
            pair = ("off", "ngram") if (r + i) % 2 == 0 else ("ngram", "off")
            got = {name: await one(sock[name], request, args.timeout) for name in pair}
            if got["ngram"].ids != got["off"].ids:
                raise BenchError(f"copy passage {i}: the n-gram reply differs from the reply without speculation")
            for name in pair:
                runs[name].append(got[name])
            log(f"round {r + 1} passage {i}: off {got['off'].tok_s:.2f}, ngram {got['ngram'].tok_s:.2f} tok/s, "
                f"drafts {got['ngram'].accepted}/{got['ngram'].proposed}")
    ngram, off = runs["ngram"], runs["off"]
    proposed = sum(x.proposed for x in ngram)

    def copied(ids: list[int], want: list[int]) -> float:
        """The share of the passage the reply repeats before its first wrong token."""
        same = next((n for n, (a, b) in enumerate(zip(ids, want, strict=False)) if a != b), min(len(ids), len(want)))
        return same / len(want)

    replies = off[: len(requests)]  # round 1, passages in order
    return {
        "ngram_speedup": rnd(statistics.median(a.tok_s / b.tok_s for a, b in zip(ngram, off, strict=True)), 3),
        "acceptance_ngram": rnd(sum(x.accepted for x in ngram) / proposed, 3) if proposed else 0.0,
        "copy_tokens": [len(x.ids) for x in replies],
        "copied_share": [rnd(copied(x.ids, w), 3) for x, w in zip(replies, wanted, strict=True)],
        "tok_s": {name: [rnd(x.tok_s, 2) for x in rs] for name, rs in runs.items()},
        "drafts": {"proposed": proposed, "accepted": sum(x.accepted for x in ngram)},
    }


def draft_models(key: str, model: Path, copier: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """The draft-model keys of one shape (module docstring)."""
    from axchat.testing import copy_model

    out: dict[str, Any] = {}
    if copier is not None:
        draft = copy_model.ensure_draft(copier)
        requests = [copy_chat(p, args.copy_tokens) for p in copy_passages()]
        pair = bench_draft(f"{key} copier", str(copier), str(draft), requests, args, log, self_draft=True)
        speedup, acceptance = pair.get("speedup", {}), pair.get("acceptance", {})
        out.update(draft_speedup=speedup.get("draft"), acceptance_draft=acceptance.get("draft"))
        out.update(draft_self_speedup=speedup.get("self"), draft_self_acceptance=acceptance.get("self"))
        out["draft"] = pair
    if key in args.drafts:
        draft = str(cli.model_dir(args.drafts[key]))
        other = bench_draft(key, str(model), draft, [chat(filler(30), args.tokens)], args, log, self_draft=False)
        out.update(
            draft_speedup_given=other.get("speedup", {}).get("draft"),
            acceptance_draft_given=other.get("acceptance", {}).get("draft"),
        )
        out["draft_given"] = other
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    load = LoadAtStart()
    out: dict[str, Any] = {"tokens": args.tokens, "c8_tokens": args.c8_tokens, "rounds": args.rounds}
    for key, given in args.shapes.items():
        model = cli.model_dir(given)
        log(f"shape {key}: {model}")
        out[key] = {"model": model_info(model)}
        if not (args.draft_only or args.copy_only):
            out[key].update(bench_shape(key, str(model), args))
        copier = None if args.no_copy else copier_for(key, model, args)
        if not args.copy_only:
            out[key].update(draft_models(key, model, copier, args))
        if copier is not None and not args.draft_only:
            copied = bench_copy(key, copier, args)
            # The copy-heavy workload's figures are the shape's n-gram figures.
            out[key].update(ngram_speedup=copied.pop("ngram_speedup", None), acceptance_ngram=copied.pop("acceptance_ngram", None))
            out[key]["copy"] = copied
    out["machine"] = load.machine()
    out["notes"] = load.notes()
    return out


if __name__ == "__main__":
    raise SystemExit(run_main("speculative", bench, parse_args(None)))
