"""A growing conversation: TTFT of each turn with prefix KV reuse on and off.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/multiturn.py --model DIR [--turns 10] [--user-words 60] [--reply-tokens 16] [--rounds 1]

Two daemons are started on DIR (each in its own private socket directory): one with the
default prefix cache ("reuse_on") and one with `--prefix-cache-mb 0` ("reuse_off"). One
client holds one connection to each and has the same --turns-turn conversation with
both, turn by turn in alternation (on, off, on, off ...), so drift in machine load hits
both alike; an idle daemon costs nothing.

Each turn resends the whole conversation: the history, then a new user message of
--user-words words (about 1.7 tokens a word with the test tokenizer; a different one
each turn) so that prefill dominates TTFT. The answer is greedy, ignore_eos, exactly
--reply-tokens tokens, and is appended to the history as the assistant message: its text
when it has at least half as many characters as a filler reply would, else a fixed
filler sentence of similar length (random weights often produce little text), the same on
both sides, so the prompt grows by the same amount every turn.

TTFT = send to the first delta, client side; the daemon's stats.ttft_ms and prefill_ms and
usage.cached_tokens are kept beside it. With --rounds R the conversation is repeated on
fresh connections (the prefix cache is private to a connection) and the per-turn
figures are medians over rounds.

Prints ONE JSON object on stdout; progress goes to stderr. Any failure exits 1 with a
message on stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

from harness import cli
from harness.daemon import Daemon
from harness.machine import LoadAtStart, loadavg, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.stream import greedy, stream

log = Log("multiturn")
SYSTEM = "You are a helpful assistant. Answer briefly."
SIDES = ("reuse_on", "reuse_off")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("multiturn", __doc__)
    p.add_argument("--turns", type=int, default=10, help="turns in the conversation (default 10)")
    p.add_argument("--user-words", type=int, default=60, help="words in each user message (default 60, about 100 tokens)")
    p.add_argument("--reply-tokens", type=int, default=16, help="greedy tokens per answer (default 16)")
    p.add_argument("--rounds", type=int, default=1, help="times the conversation is repeated (default 1)")
    cli.add_daemon_args(p, serve_arg_help="extra `axchat serve` argument for both daemons (repeatable)", timeout_help="seconds one turn may take (default 600)")
    args = p.parse_args(argv)
    if args.turns < 2 or args.user_words < 1 or args.reply_tokens < 1 or args.rounds < 1:
        p.error("--turns must be at least 2; --user-words, --reply-tokens and --rounds at least 1")
    return args


async def conversation(sockets: dict[str, str], args: argparse.Namespace, round_i: int) -> dict[str, list[dict[str, Any]]]:
    from axchat.aclient import AsyncClient
    from axchat.protocol import v1

    clients = {side: AsyncClient(sock, connect_timeout_s=30.0) for side, sock in sockets.items()}
    per_turn: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    try:
        for c in clients.values():
            await c.hello()
        history = [v1.ChatMessage(role="system", content=SYSTEM)]
        filler_reply = "Sure, here is a short answer about that topic for you."
        for turn in range(1, args.turns + 1):
            user = v1.ChatMessage(role="user", content=filler(args.user_words, salt=f"round{round_i}turn{turn}"))
            msgs = [*history, user]
            texts = {}
            for side in SIDES:
                rec = await stream(clients[side], v1.Generate(messages=msgs, sampling=greedy(args.reply_tokens)), args.timeout, f"{side} turn {turn}")
                if rec.first is None:
                    raise BenchError(f"{side} turn {turn}: no delta with token ids")
                d = rec.done
                per_turn[side].append({
                    "ttft_ms": rec.ttft_ms(),
                    "daemon_ttft_ms": d.stats.ttft_ms,
                    "prefill_ms": d.stats.prefill_ms,
                    "prompt_tokens": d.usage.prompt_tokens,
                    "cached_tokens": d.usage.cached_tokens,
                    "trimmed_messages": d.trimmed_messages,
                    "tokens_per_delta": d.usage.completion_tokens / max(1, len(rec.deltas)),
                    "first_delta_tokens": rec.first_delta_tokens(),
                })
                texts[side] = rec.text
            on, off = per_turn["reuse_on"][-1], per_turn["reuse_off"][-1]
            log(
                f"round {round_i + 1} turn {turn}: prompt {on['prompt_tokens']} tokens; TTFT on {on['ttft_ms']:.0f} ms "
                f"(cached {on['cached_tokens']}), off {off['ttft_ms']:.0f} ms (cached {off['cached_tokens']}); load {loadavg()}"
            )
            reply = texts["reuse_on"].strip()
            if len(reply) < len(filler_reply) // 2:
                reply = filler_reply
            history = [*msgs, v1.ChatMessage(role="assistant", content=reply)]
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
    return per_turn


async def run_all(sockets: dict[str, str], args: argparse.Namespace) -> list[dict[str, list[dict[str, Any]]]]:
    from axchat import aclient
    from axchat.protocol import v1

    log("warm-up (untimed): one request on each daemon")
    for side, sock in sockets.items():
        async with aclient.connect(sock, connect_timeout_s=30.0) as c:
            msg = v1.ChatMessage(role="user", content=filler(args.user_words, salt="warmup"))
            await stream(c, v1.Generate(messages=[msg], sampling=greedy(4)), args.timeout, f"{side} warm-up")
    return [await conversation(sockets, args, i) for i in range(args.rounds)]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = cli.model_dir(args.model)
    info = model_info(model_dir)
    load = LoadAtStart()
    daemons = {
        "reuse_on": Daemon(str(model_dir), args.serve_arg, log, label="daemon (reuse on)"),
        "reuse_off": Daemon(str(model_dir), [*args.serve_arg, "--prefix-cache-mb", "0"], log, label="daemon (reuse off)"),
    }
    warnings: dict[str, list[str]] = {}
    try:
        for d in daemons.values():
            d.start(args.ready_timeout)
        rounds = asyncio.run(run_all({s: d.socket for s, d in daemons.items()}, args))
        threads = daemons["reuse_on"].threads()
    finally:
        errors = []
        for side, d in daemons.items():
            try:
                warnings[side] = d.finish()
            except BenchError as exc:
                errors.append(str(exc))
        if errors:
            raise BenchError("; ".join(errors))

    def per_turn(side: str, key: str, nd: int = 1) -> list[Any]:
        return [rnd(statistics.median([r[side][t][key] for r in rounds]), nd) for t in range(args.turns)]

    out: dict[str, Any] = {}
    for side in SIDES:
        out[side] = {
            "ttft_ms": per_turn(side, "ttft_ms"),
            "cached_tokens": per_turn(side, "cached_tokens", 0),
            "daemon_ttft_ms": per_turn(side, "daemon_ttft_ms"),
            "prefill_ms": per_turn(side, "prefill_ms"),
            "prompt_tokens": per_turn(side, "prompt_tokens", 0),
            "tokens_per_delta": per_turn(side, "tokens_per_delta", 2),
        }
    result: dict[str, Any] = {
        **out,
        "turn10_over_turn1_on": None,
        "turn10_over_turn1_off": None,
    }
    last = args.turns - 1
    for side, key in (("reuse_on", "turn10_over_turn1_on"), ("reuse_off", "turn10_over_turn1_off")):
        t = out[side]["ttft_ms"]
        result[key] = rnd(t[last] / t[0], 2) if t[0] else None
    if args.turns != 10:
        result["note_turns"] = f"turn10_over_turn1_* compare turn {args.turns} (the last) with turn 1"
    notes = []
    if any(r[side][t]["first_delta_tokens"] > 1 for r in rounds for side in SIDES for t in range(args.turns)):
        notes.append(
            "first deltas carry several tokens (ids the tokenizer cannot decode): client-side TTFT includes later tokens; "
            "see daemon_ttft_ms, or use bench/visible_model.py for a same-shape copy"
        )
    if any(r["reuse_on"][t]["trimmed_messages"] for r in rounds for t in range(args.turns)):
        notes.append("the context policy dropped old turns: the conversation outgrew the context")
    notes += load.notes()
    result.update({
        "turns": args.turns,
        "user_words": args.user_words,
        "reply_tokens": args.reply_tokens,
        "rounds": args.rounds,
        "model": info,
        "daemon_threads": threads,
        "serve_args": args.serve_arg,
        "machine": load.machine(),
        "daemon_log_warnings": warnings,
        "notes": notes,
    })
    return result


def main(argv: list[str] | None = None) -> int:
    return run_main("multiturn", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
