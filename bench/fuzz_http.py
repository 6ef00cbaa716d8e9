"""Hostile HTTP bodies against a web bridge while good clients stream through it: nothing one
request holds may cut another user's stream. The HTTP half of `bench/fuzz.py`.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/fuzz_http.py --model DIR [--bodies 200] [--good 3] [--seed 0]

One daemon is started on DIR and one `axchat web` in front of it. --good clients, each a
user of its own, stream long greedy answers through the bridge for the whole run (SSE,
`ignore_eos`; a finished answer is followed by the next at once). A fuzzer sends
--bodies requests one at a time on fresh connections, drawn from: half a million empty
messages just under the 8 MiB body limit, thousands of long messages over the daemon's
frame limit, bodies over the body limit, deeply nested JSON, a 1 MB `user`, a 1 MB
`model`, long and many stop strings, broken JSON, wrong field types, and a few odd but
valid requests (which are read to the end).

Counted: `good_streams_cut` (a good stream that ended without `[DONE]` or with an error
event; goal 0), `good_max_gap_ms` (the largest gap between two events of one good
answer while fuzzing; goal at most 1000), the fuzzer's status codes, `server_errors`
(5xx other than 503), `no_response`, tracebacks in either log, and both exit codes.

Prints ONE JSON object on stdout; progress goes to stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import cli
from harness.bridge import Bridge
from harness.daemon import Daemon
from harness.machine import machine, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main

log = Log("fuzz_http")
REPLY_TIMEOUT_S = 60.0
BODY_LIMIT = 8 << 20  # the bridge's (axchat.frontends.web.app.MAX_BODY_BYTES)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("fuzz_http", __doc__)
    p.add_argument("--bodies", type=int, default=200, help="hostile requests to send (default 200)")
    p.add_argument("--good", type=int, default=3, help="good clients streaming meanwhile (default 3)")
    p.add_argument("--good-tokens", type=int, default=200, help="tokens per good answer (default 200)")
    p.add_argument("--seed", type=int, default=0)
    cli.add_daemon_args(p)
    return p.parse_args(argv)


def chat(messages: Any, **more: Any) -> dict[str, Any]:
    return {"messages": messages, **more}


class Bodies:
    """The hostile requests, each (kind, body bytes, content type)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        empty = b'{"role":"user"},'
        count = (BODY_LIMIT - 100) // len(empty)
        self.empty_messages = b'{"messages":[' + empty * (count - 1) + empty[:-1] + b"]}"
        self.kinds = [
            self.many_empty, self.over_frame, self.over_body, self.deep, self.long_user, self.long_model,
            self.stops, self.broken, self.wrong_types, self.odd_valid,
        ]  # fmt: skip

    def make(self) -> tuple[str, bytes, str]:
        made = self.rng.choice(self.kinds)
        body, ctype = made()
        return made.__name__, body, ctype

    def many_empty(self) -> tuple[bytes, str]:
        return self.empty_messages, "application/json"

    def over_frame(self) -> tuple[bytes, str]:
        msgs = [{"role": "user", "content": "w" * 1500} for _ in range(4000)]
        return json.dumps(chat(msgs)).encode(), "application/json"

    def over_body(self) -> tuple[bytes, str]:
        return json.dumps(chat([{"role": "user", "content": "x" * (BODY_LIMIT + 10)}])).encode(), "application/json"

    def deep(self) -> tuple[bytes, str]:
        n = self.rng.choice([1000, 100_000])
        return b'{"messages":' + b"[" * n + b"]" * n + b"}", "application/json"

    def long_user(self) -> tuple[bytes, str]:
        return json.dumps(chat([{"role": "user", "content": "hi"}], user="u" * 1_000_000, max_tokens=2)).encode(), "application/json"

    def long_model(self) -> tuple[bytes, str]:
        return json.dumps(chat([{"role": "user", "content": "hi"}], model="m" * 1_000_000)).encode(), "application/json"

    def stops(self) -> tuple[bytes, str]:
        stop = ["s" * self.rng.choice([10, 100_000])] * self.rng.choice([4, 1000])
        return json.dumps(chat([{"role": "user", "content": "hi"}], stop=stop, max_tokens=2)).encode(), "application/json"

    def broken(self) -> tuple[bytes, str]:
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.choice([1, 100, 10_000]))), "application/json"

    def wrong_types(self) -> tuple[bytes, str]:
        bad = self.rng.choice([{"messages": "hi"}, {"messages": [{"role": 3}]}, chat([{"role": "user", "content": "x"}], max_tokens="many"),
                               chat([{"role": "user", "content": "x"}], temperature=-5), chat([])])  # fmt: skip
        return json.dumps(bad).encode(), self.rng.choice(["application/json", "text/plain"])

    def odd_valid(self) -> tuple[bytes, str]:
        msgs = [{"role": "system", "content": "be odd"}, {"role": "user", "content": "🙂 " * 50}]
        return json.dumps(chat(msgs, max_tokens=3, temperature=1.7, top_p=0.01, seed=self.rng.getrandbits(31))).encode(), "application/json"


async def good_client(session: Any, url: str, index: int, tokens: int, stop: asyncio.Event, out: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": f"good client {index}: tell me a long story"}], "stream": True,
            "max_tokens": tokens, "ignore_eos": True, "user": f"good-{index}"}  # fmt: skip
    while not stop.is_set():
        last = None
        done = False
        async with session.post(url + "v1/chat/completions", json=body, timeout=REPLY_TIMEOUT_S) as reply:
            if reply.status != 200:
                out["cut"].append(f"client {index}: HTTP {reply.status}")
                return
            async for raw in reply.content:
                line = raw.strip()
                if not line.startswith(b"data: "):
                    continue
                now = time.monotonic()
                if line == b"data: [DONE]":
                    done = True
                    break
                if b'"error"' in line:
                    out["cut"].append(f"client {index}: {line[:200]!r}")
                    return
                if last is not None:
                    out["gaps"].append((now, now - last))
                last = now
        if not done:
            out["cut"].append(f"client {index}: stream closed before [DONE]")
            return
        out["answers"] += 1


async def fuzz(args: argparse.Namespace, url: str, bridge: subprocess.Popen[str]) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(args.seed)
    stop = asyncio.Event()
    out: dict[str, Any] = {"cut": [], "gaps": [], "answers": 0}
    statuses: dict[str, dict[int, int]] = {}
    server_errors = no_response = 0
    async with aiohttp.ClientSession() as good_session:
        goods = [asyncio.create_task(good_client(good_session, url, i, args.good_tokens, stop, out)) for i in range(args.good)]
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while len(out["gaps"]) < args.good and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling the good clients' progress, with a deadline
        fuzz_from = time.monotonic()
        bodies = Bodies(rng)
        for i in range(args.bodies):
            kind, body, ctype = bodies.make()
            try:
                # A fresh connection each: an over-limit body may end its connection.
                async with aiohttp.ClientSession() as session, session.post(
                    url + "v1/chat/completions", data=body, headers={"Content-Type": ctype}, timeout=REPLY_TIMEOUT_S
                ) as reply:
                    await reply.read()
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                if bridge.poll() is not None:
                    break
                log(f"body {i} ({kind}): no response ({type(exc).__name__})")
                no_response += 1
                continue
            by_kind = statuses.setdefault(kind, {})
            by_kind[status] = by_kind.get(status, 0) + 1
            server_errors += status >= 500 and status != 503
            if (i + 1) % 50 == 0:
                log(f"{i + 1} bodies sent")
        fuzz_until = time.monotonic()
        stop.set()
        await asyncio.wait(goods, timeout=REPLY_TIMEOUT_S * 2)
        for g in goods:
            if g.done() and g.exception() is not None:
                out["cut"].append(repr(g.exception()))
    during = [gap for end, gap in out["gaps"] if fuzz_from <= end <= fuzz_until]
    return {
        "bodies": args.bodies,
        "statuses": {k: {str(s): n for s, n in sorted(v.items())} for k, v in sorted(statuses.items())},
        "server_errors": server_errors,
        "no_response": no_response,
        "good_streams_cut": len(out["cut"]),
        "good_cuts": out["cut"][:10],
        "good_answers": out["answers"],
        "good_max_gap_ms": rnd(max(during, default=0.0) * 1e3),
        "fuzz_s": rnd(fuzz_until - fuzz_from),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    daemon = Daemon(args.model, args.serve_arg, log)
    bridge: Bridge | None = None
    try:
        daemon.start(args.ready_timeout)
        bridge = Bridge(daemon.socket)
        url = bridge.start()
        assert bridge.proc is not None
        result = asyncio.run(fuzz(args, url, bridge.proc))
    finally:
        if bridge is not None:
            bridge.stop()
        try:
            daemon.finish()
        except BenchError as exc:
            log(str(exc))
    assert bridge is not None
    web_text = bridge.log_text()
    return {
        "bench": "fuzz_http",
        "model": model_info(Path(args.model)),
        "machine": machine(),
        **result,
        "tracebacks": daemon.final_log.count("Traceback") + web_text.count("Traceback"),
        "daemon_exit_code": daemon.exit_code,
        "bridge_exit_code": bridge.exit_code,
    }


if __name__ == "__main__":
    sys.exit(run_main("fuzz_http", bench, parse_args(sys.argv[1:])))
