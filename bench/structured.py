"""Constrained decoding's cost: tokens/s and first-token time of JSON-schema-constrained requests over free ones.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/structured.py --model DIR [--batches 1,8] [--tokens 64] [--rounds 3]

One daemon is started on DIR (default `axchat serve`: llama.cpp, q8_0). For each batch
size B, B clients (each its own connection) send one greedy request at the same moment
(ignore_eos, exactly --tokens tokens) and stream it: once free, once with a JSON schema
constraint (an array of objects with a string, an integer, an enum and a nested array,
at least 1000 items, so the grammar is still open after --tokens tokens and every token
is masked). Free and constrained alternate within each round, in alternating order, so
drift in machine load hits both alike; each figure is the median over rounds.

Speculation (the daemon's default n-gram mode, in which a constrained greedy stream
proposes the tokens its grammar forces and n-gram guesses the grammar allows): a second
daemon with `--speculate off` runs beside the first, and each round also sends one
batch-1 request to each (alternating which goes first) constrained by a schema of long
property names (an array of at least 1000 objects, so it is still open after --tokens
tokens; the names are forced, the values free).

Keys: `constrained_over_free_bB` = aggregate decode tokens/s constrained / free at
batch B; `ttft_ratio` = median client-side first-token time constrained / free at the
smallest batch (it includes the constraint's check and compile). `mask_ms_per_step_bB`:
the constraint's own work per decode step of B streams, timed in this process on the
model's vocabulary (B masks filled together, then B masked greedy choices from random
rows), independent of the daemon's timings. `speculation_b1`: `speedup` = median over
rounds of that round's tokens/s with speculation over without, `tok_s` of each, and the
speculating daemon's proposed and accepted tokens per request (`accepted_share`:
accepted / completion tokens).

Prints ONE JSON object on stdout; progress goes to stderr. Any failure exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from harness import cli
from harness.daemon import Daemon
from harness.machine import LoadAtStart, model_info
from harness.numbers import rnd
from harness.output import Log, run_main
from harness.prompts import filler
from harness.stream import Stream, greedy, stream

log = Log("structured")

SCHEMA = {
    "type": "array",
    "minItems": 1000,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user", "guest"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        },
        "required": ["name", "age", "role", "tags"],
        "additionalProperties": False,
    },
}

# Long names forced between short free values: what a form-filling or extraction schema looks like.
LONG_NAMES = {
    "type": "array",
    "minItems": 1000,
    "items": {
        "type": "object",
        "properties": {
            "customer_full_name": {"type": "string", "maxLength": 12},
            "shipping_address_first_line": {"type": "string", "maxLength": 16},
            "order_total_in_whole_cents": {"type": "integer", "minimum": 0, "maximum": 99999},
            "express_delivery_requested": {"type": "boolean"},
        },
        "required": ["customer_full_name", "shipping_address_first_line", "order_total_in_whole_cents", "express_delivery_requested"],
        "additionalProperties": False,
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("structured", __doc__)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per request (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of free + constrained per batch size (default 3)")
    p.add_argument("--prompt-words", type=int, default=30, help="words in each question (default 30)")
    cli.add_daemon_args(p, timeout_help="seconds one batch may take (default 600)")
    args = p.parse_args(argv)
    args.batch_sizes = [int(x) for x in args.batches.split(",") if x.strip()]
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.tokens < 2 or args.rounds < 1:
        p.error("--batches must be positive integers, --tokens at least 2, --rounds at least 1")
    return args


async def one_batch(socket: str, n: int, constrained: bool, args: argparse.Namespace, tag: str, schema: Any = SCHEMA) -> dict[str, float]:
    from axchat.aclient import AsyncClient
    from axchat.protocol import v1

    clients = [AsyncClient(socket, connect_timeout_s=30.0) for _ in range(n)]
    try:
        await asyncio.gather(*(c.hello() for c in clients))
        reqs = []
        for i in range(n):
            text = filler(args.prompt_words, salt=f"{tag}-{i}")  # no two prompts alike: no cache hits
            gen = v1.Generate(messages=[v1.ChatMessage(role="user", content=text)], sampling=greedy(args.tokens))
            if constrained:
                gen.constraint = v1.Constraint(kind="json_schema", schema=json.dumps(schema))
            reqs.append(gen)
        recs: list[Stream] = await asyncio.gather(
            *(stream(c, r, args.timeout, f"{tag} client {i + 1}") for i, (c, r) in enumerate(zip(clients, reqs, strict=True)))
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    start = min(r.first for r in recs if r.first is not None)
    end = max(r.done_at for r in recs if r.done_at is not None)
    total = sum(r.completion_tokens for r in recs)
    stats = [r.done.stats for r in recs if r.done is not None and r.done.stats is not None]
    return {
        "agg_tok_s": total / (end - start),
        "ttft_ms": statistics.median(r.ttft_ms() or 0.0 for r in recs),
        "proposed": sum(st.draft_proposed for st in stats) / n,
        "accepted": sum(st.draft_accepted for st in stats) / n,
        "completion": total / n,
    }


async def run_all(socket: str, off_socket: str, args: argparse.Namespace) -> dict[str, Any]:
    log("warm-up (untimed): free and constrained, at the largest batch")
    short = argparse.Namespace(**{**vars(args), "tokens": 4})
    for constrained in (False, True):
        await one_batch(socket, max(args.batch_sizes), constrained, short, "warm")
    await one_batch(off_socket, 1, True, short, "warm-off", LONG_NAMES)
    runs: dict[str, list[dict[str, float]]] = {}
    for r in range(args.rounds):
        order = (("spec_on_b1", socket), ("spec_off_b1", off_socket))
        for key, sock in order if r % 2 == 0 else order[::-1]:
            res = await one_batch(sock, 1, True, args, f"r{r}-{key}", LONG_NAMES)
            runs.setdefault(key, []).append(res)
            log(f"round {r + 1}/{args.rounds} {key}: {res['agg_tok_s']:.1f} tok/s, accepted {res['accepted']:.0f}/{res['proposed']:.0f}")
        for n in args.batch_sizes:
            order = (False, True) if (r + n) % 2 == 0 else (True, False)
            for constrained in order:
                key = f"{'constrained' if constrained else 'free'}_b{n}"
                res = await one_batch(socket, n, constrained, args, f"r{r}-{key}")
                runs.setdefault(key, []).append(res)
                log(f"round {r + 1}/{args.rounds} {key}: {res['agg_tok_s']:.1f} tok/s, ttft {res['ttft_ms']:.0f} ms")
    return runs


def mask_cost(model_dir: Any, batch: int, steps: int = 64) -> dict[str, float]:
    """Milliseconds a step of `batch` constrained streams spends on masks and masked choices."""
    import numpy as np
    from tokenizers import Tokenizer

    from axchat.actors import grammar
    from axchat.actors.token_choice import SequenceSampler
    from axchat.actors.token_mask import ConstrainedChoice, ConstraintVocab, TokenMask, compile_matcher, fill_together
    from axchat.actors.tool_syntax import HERMES
    from axchat.protocol import v1

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab = ConstraintVocab(tok, [0], int(model_info(model_dir).get("vocab_size") or tok.get_vocab_size()))
    compiled = grammar.build(v1.Constraint(kind="json_schema", schema=json.dumps(SCHEMA)), HERMES, vocab.get())
    n = vocab.get().vocab_size
    choices = [
        ConstrainedChoice(SequenceSampler(v1.Sampling(), []), TokenMask(compile_matcher(vocab, compiled.grammar), n))
        for _ in range(batch)
    ]
    rows = np.random.default_rng(0).standard_normal((batch, n)).astype(np.float32)
    fill_s = choose_s = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        fill_together([c.mask for c in choices])
        t1 = time.perf_counter()
        for c, row in zip(choices, rows, strict=True):
            c.choose(row)
        fill_s, choose_s = fill_s + t1 - t0, choose_s + time.perf_counter() - t1
        rows = np.roll(rows, 7, axis=1)  # other tokens next step
    return {"masks": rnd(fill_s * 1e3 / steps, 3), "choices": rnd(choose_s * 1e3 / steps, 3)}  # type: ignore[dict-item]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = cli.model_dir(args.model)
    load = LoadAtStart()
    daemon = Daemon(str(model_dir), args.serve_arg, log)
    off = Daemon(str(model_dir), ["--speculate", "off", *args.serve_arg], log, "speculate off")
    try:
        daemon.start(args.ready_timeout)
        off.start(args.ready_timeout)
        runs = asyncio.run(run_all(daemon.socket, off.socket, args))
    finally:
        try:
            warnings = daemon.finish()
        finally:
            warnings += off.finish()
    med = statistics.median
    out: dict[str, Any] = {}
    for n in args.batch_sizes:
        free, con = runs[f"free_b{n}"], runs[f"constrained_b{n}"]
        out[f"constrained_over_free_b{n}"] = rnd(med(c["agg_tok_s"] / f["agg_tok_s"] for c, f in zip(con, free, strict=True)), 3)
        out[f"free_tok_s_b{n}"] = rnd(med(f["agg_tok_s"] for f in free), 1)
        out[f"constrained_tok_s_b{n}"] = rnd(med(c["agg_tok_s"] for c in con), 1)
        out[f"mask_ms_per_step_b{n}"] = mask_cost(model_dir, n)
    lo = min(args.batch_sizes)
    free_ttft = med(f["ttft_ms"] for f in runs[f"free_b{lo}"])
    con_ttft = med(c["ttft_ms"] for c in runs[f"constrained_b{lo}"])
    out["ttft_ratio"] = rnd(con_ttft / free_ttft, 3) if free_ttft else None
    out["ttft_ms"] = {"free": rnd(free_ttft), "constrained": rnd(con_ttft), "batch": lo}
    on, off_runs = runs["spec_on_b1"], runs["spec_off_b1"]
    out["speculation_b1"] = {
        "speedup": rnd(med(a["agg_tok_s"] / b["agg_tok_s"] for a, b in zip(on, off_runs, strict=True)), 3),
        "tok_s": {"on": rnd(med(a["agg_tok_s"] for a in on), 1), "off": rnd(med(b["agg_tok_s"] for b in off_runs), 1)},
        "proposed": rnd(med(a["proposed"] for a in on), 1),
        "accepted": rnd(med(a["accepted"] for a in on), 1),
        "accepted_share": rnd(med(a["accepted"] / a["completion"] for a in on), 3),
    }
    return {
        **out,
        "runs": {k: [{kk: rnd(vv, 2) for kk, vv in v.items()} for v in vs] for k, vs in runs.items()},
        "tokens": args.tokens,
        "rounds": args.rounds,
        "model": model_info(model_dir),
        "serve_args": args.serve_arg,
        "machine": load.machine(),
        "daemon_log_warnings": warnings,
        "notes": load.notes(),
    }


def main(argv: list[str] | None = None) -> int:
    return run_main("structured", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
