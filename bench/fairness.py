"""One long paste against three chatters: the chatters' inter-token gaps before and during its prefill.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/fairness.py --model DIR [--chatters 3] [--long-tokens 2000] [--rounds 2]

One daemon is started on DIR (private socket directory). Three chatters, each with its own
connection, stream long greedy answers (ignore_eos, --chat-tokens tokens; a chatter whose
answer ends asks again at once) for the whole run. Every round then has:

* a normal window: until each chatter has received --normal-gaps more deltas;
* a long prompt: a fourth client (a fresh connection each round, so no prefix reuse) sends
  one user message of about --long-tokens tokens (capped to fit the context) with
  max_tokens 1; its prefill runs from its send to its first delta, client side.

A gap is the time between two consecutive deltas of the same chatter answer, client side
(the pause while a chatter's next answer starts is not a gap). Normal gaps are those that
lie inside the normal windows; prefill gaps are those that overlap a long prompt's
prefill window, so a chatter stalled for the whole prefill counts with its full stall.
A delta may carry several tokens (the device's runs of greedy steps, at most 150 ms of
them), so `token_ratio` also compares gaps per token: each gap divided by the tokens it
brought, counted once per token.

Prints ONE JSON object on stdout; progress goes to stderr. Any failure exits 1 with a
message on stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

from harness import cli
from harness.daemon import Daemon, serving
from harness.machine import LoadAtStart, loadavg, model_info
from harness.numbers import percentile, rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.stream import Stream, greedy, stream, text_comes_late

log = Log("fairness")
WORDS_PER_TOKEN = 1 / 1.85  # filler text with the test tokenizer, measured (1.83 on a 1120-word message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("fairness", __doc__)
    p.add_argument("--chatters", type=int, default=3, help="clients streaming answers (default 3)")
    p.add_argument("--long-tokens", type=int, default=2000, help="target size of the long prompt in tokens (default 2000; capped to the context)")
    p.add_argument("--chat-tokens", type=int, default=256, help="tokens per chatter answer (default 256)")
    p.add_argument("--normal-gaps", type=int, default=20, help="deltas per chatter in each normal window (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="long prompts sent, one per round (default 2)")
    cli.add_daemon_args(p, timeout_help="seconds any one wait may take (default 600)")
    args = p.parse_args(argv)
    if args.chatters < 1 or args.long_tokens < 10 or args.chat_tokens < 2 or args.normal_gaps < 2 or args.rounds < 1:
        p.error("--chatters, --rounds >= 1; --long-tokens >= 10; --chat-tokens, --normal-gaps >= 2")
    return args


class Chatter:
    def __init__(self, index: int) -> None:
        self.index = index
        self.answers: list[Stream] = []
        self.deltas = 0
        self.progress = asyncio.Event()
        self.stop = asyncio.Event()
        self.error: BaseException | None = None

    def gaps(self) -> list[tuple[float, float]]:
        """(start, end) of every gap between consecutive deltas of one answer."""
        return [(a[0], b[0]) for rec in self.answers for a, b in zip(rec.deltas, rec.deltas[1:], strict=False)]

    def token_gaps(self) -> list[tuple[float, float, int]]:
        """(start, end, tokens of the later delta) of the same gaps: a run of greedy steps
        on the device thread sends several tokens in one delta, so a gap between deltas
        can span several tokens' time."""
        return [(a[0], b[0], b[1]) for rec in self.answers for a, b in zip(rec.deltas, rec.deltas[1:], strict=False)]

    async def run(self, socket: str, args: argparse.Namespace) -> None:
        from axchat.aclient import AsyncClient
        from axchat.protocol import v1

        client = AsyncClient(socket, connect_timeout_s=30.0)

        def on_delta(rec: Stream) -> None:
            self.deltas += 1
            self.progress.set()

        try:
            await client.hello()
            n = 0
            while not self.stop.is_set():
                n += 1
                rec = Stream()
                self.answers.append(rec)
                req = v1.Generate(messages=[v1.ChatMessage(role="user", content=filler(30, salt=f"chatter{self.index}q{n}"))], sampling=greedy(args.chat_tokens))
                task = asyncio.create_task(stream(client, req, args.timeout, f"chatter {self.index} answer {n}", rec=rec, on_delta=on_delta))
                stopper = asyncio.create_task(self.stop.wait())
                await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not task.done():  # told to stop: the answer ends as cancelled
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    break
                task.result()  # raises its BenchError, if any
        except BaseException as exc:
            self.error = exc
            self.progress.set()
            raise
        finally:
            await client.close()


async def wait_deltas(chatters: list[Chatter], extra: int, timeout_s: float) -> None:
    targets = [c.deltas + extra for c in chatters]
    deadline = time.monotonic() + timeout_s
    for c, target in zip(chatters, targets, strict=True):
        while c.deltas < target:
            if c.error is not None:
                raise BenchError(f"chatter {c.index} failed: {c.error}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"chatter {c.index}: fewer than {extra} deltas in {timeout_s:.0f}s")
            c.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.progress.wait(), remaining)


async def run_all(socket: str, args: argparse.Namespace, context: int) -> dict[str, Any]:
    from axchat import aclient
    from axchat.protocol import v1

    log("warm-up (untimed): one short request and one 300-token prompt")
    async with aclient.connect(socket, connect_timeout_s=30.0) as c:
        await stream(c, v1.Generate(messages=[v1.ChatMessage(role="user", content=filler(30))], sampling=greedy(8)), args.timeout, "warm-up")
        await stream(c, v1.Generate(messages=[v1.ChatMessage(role="user", content=filler(170, salt="warmup2"))], sampling=greedy(1)), args.timeout, "warm-up 2")

    long_tokens = min(args.long_tokens, context - 80)  # room for the chat template and one answer token
    long_words = int(long_tokens * WORDS_PER_TOKEN)
    chatters = [Chatter(i + 1) for i in range(args.chatters)]
    tasks = [asyncio.create_task(c.run(socket, args)) for c in chatters]
    normal: list[tuple[float, float]] = []
    prefills: list[dict[str, Any]] = []
    try:
        log(f"{args.chatters} chatters started; waiting for their streams")
        await wait_deltas(chatters, 3, args.timeout)
        for r in range(args.rounds):
            t_a = time.monotonic()
            await wait_deltas(chatters, args.normal_gaps, args.timeout)
            t_b = time.monotonic()
            normal.append((t_a, t_b))
            async with aclient.connect(socket, connect_timeout_s=30.0) as c:
                msg = v1.ChatMessage(role="user", content=filler(long_words, salt=f"long{r}"))
                rec = await stream(c, v1.Generate(messages=[msg], sampling=greedy(1)), args.timeout, f"long prompt {r + 1}")
            if rec.first is None:
                raise BenchError(f"long prompt {r + 1}: no delta with token ids")
            d = rec.done
            prefills.append({
                "window": (rec.sent, rec.first),
                "ttft_ms": rec.ttft_ms(),
                "prompt_tokens": d.usage.prompt_tokens,
                "cached_tokens": d.usage.cached_tokens,
                "daemon_prefill_ms": d.stats.prefill_ms,
                "daemon_queue_ms": d.stats.queue_ms,
                "loadavg": loadavg(),
            })
            log(
                f"round {r + 1}/{args.rounds}: normal window {t_b - t_a:.1f}s; long prompt of {d.usage.prompt_tokens} tokens: "
                f"first delta after {rec.ttft_ms():.0f} ms (daemon prefill {d.stats.prefill_ms:.0f} ms); load {loadavg()}"
            )
        # A normal window after the last prompt too: chatters' answers grow over the run.
        t_a = time.monotonic()
        await wait_deltas(chatters, args.normal_gaps, args.timeout)
        normal.append((t_a, time.monotonic()))
    finally:
        for c in chatters:
            c.stop.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), args.timeout)
    for c, res in zip(chatters, results, strict=True):
        if isinstance(res, BaseException):
            raise BenchError(f"chatter {c.index} failed: {res}")
    return {"chatters": chatters, "normal": normal, "prefills": prefills}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = cli.model_dir(args.model)
    info = model_info(model_dir)
    load = LoadAtStart()
    daemon = Daemon(str(model_dir), args.serve_arg, log)
    with serving(daemon, args.ready_timeout):
        out = asyncio.run(run_all(daemon.socket, args, info["context"] or 2048))
        threads = daemon.threads()

    all_gaps = [g for c in out["chatters"] for g in c.gaps()]
    normal = [(e - s) * 1e3 for s, e in all_gaps if any(a <= s and e <= b for a, b in out["normal"])]
    during_rounds = []
    for p in out["prefills"]:
        a, b = p["window"]
        during_rounds.append([(e - s) * 1e3 for s, e in all_gaps if s < b and e > a])
    during = [g for r in during_rounds for g in r]
    p95n, p95d = percentile(normal, 95), percentile(during, 95)
    # Per token: each gap shared by the tokens it brought, counted once per token.
    token_gaps = [g for c in out["chatters"] for g in c.token_gaps()]
    per_token_normal = [
        (e - s) * 1e3 / n for s, e, n in token_gaps for _ in range(n) if any(a <= s and e <= b for a, b in out["normal"])
    ]
    per_token_during = [
        (e - s) * 1e3 / n for s, e, n in token_gaps for _ in range(n) for p in out["prefills"] if s < p["window"][1] and e > p["window"][0]
    ]
    tp95n, tp95d = percentile(per_token_normal, 95), percentile(per_token_during, 95)
    tokens = sum(n for c in out["chatters"] for r in c.answers for _, n in r.deltas)
    deltas = sum(len(r.deltas) for c in out["chatters"] for r in c.answers)
    notes = []
    if text_comes_late([r for c in out["chatters"] for r in c.answers]):
        notes.append(
            "chatters' first deltas carry several tokens (ids the tokenizer cannot decode): gaps are between text pieces, "
            "not tokens; use bench/visible_model.py for a same-shape copy"
        )
    notes += load.notes()
    return {
        "gap_ms_p95_normal": rnd(p95n),
        "gap_ms_p95_during_prefill": rnd(p95d),
        "ratio": rnd(p95d / p95n, 2) if p95n and p95d is not None else None,
        "token_gap_ms_p95_normal": rnd(tp95n),
        "token_gap_ms_p95_during_prefill": rnd(tp95d),
        "token_ratio": rnd(tp95d / tp95n, 2) if tp95n and tp95d is not None else None,
        "gap_ms_p50_normal": rnd(percentile(normal, 50)),
        "gap_ms_p50_during_prefill": rnd(percentile(during, 50)),
        "gap_ms_max_normal": rnd(max(normal, default=None)),
        "gap_ms_max_during_prefill": rnd(max(during, default=None)),
        "gaps_counted": {"normal": len(normal), "during_prefill": len(during)},
        "gap_ms_p95_during_prefill_rounds": [rnd(percentile(r, 95)) for r in during_rounds],
        "long_prompt": [
            {
                "prompt_tokens": p["prompt_tokens"],
                "cached_tokens": p["cached_tokens"],
                "ttft_ms": rnd(p["ttft_ms"]),
                "daemon_prefill_ms": rnd(p["daemon_prefill_ms"]),
                "daemon_queue_ms": rnd(p["daemon_queue_ms"]),
                "loadavg_1m": p["loadavg"][0] if p["loadavg"] else None,
            }
            for p in out["prefills"]
        ],
        "chatters": args.chatters,
        "chat_tokens": args.chat_tokens,
        "tokens_per_delta": rnd(tokens / deltas, 2) if deltas else None,
        "rounds": args.rounds,
        "model": info,
        "daemon_threads": threads,
        "serve_args": args.serve_arg,
        "machine": load.machine(),
        "daemon_log_warnings": daemon.warnings,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    return run_main("fairness", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
