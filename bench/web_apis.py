"""The web bridge's own CPU per streamed token on each of its APIs: OpenAI's SSE
(`/v1/chat/completions`) against Ollama's NDJSON (`/api/chat`).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/web_apis.py --model DIR [--streams 8] [--tokens 256] [--rounds 3]

One daemon is started on DIR and one `axchat web` in front of it. Each round runs
--streams concurrent greedy streams of --tokens tokens each (`ignore_eos`), each on its
own connection (its own end user), once through each API, the order alternating from
round to round. The bridge process's CPU time over a run (user and system, from /proc)
divided by the tokens it streamed is its cost per token on that API. /proc counts CPU in
clock ticks (10 ms): a run needs thousands of tokens for that to be small.

Keys: per API, `bridge_cpu_us_per_token` and `client_tok_s` (all streams' tokens over the
run's wall time) as the median over rounds, with every round's figures; and
`ollama_over_openai_cpu`, the ratio of the medians.

Prints ONE JSON object on stdout; progress goes to stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import cli
from harness.bridge import Bridge
from harness.daemon import Daemon, serving
from harness.machine import machine, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main

log = Log("web_apis")
STREAM_TIMEOUT_S = 300.0
APIS = ("openai", "ollama")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("web_apis", __doc__)
    p.add_argument("--streams", type=int, default=8, help="concurrent streams per run (default 8)")
    p.add_argument("--tokens", type=int, default=256, help="tokens per stream (default 256)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each API, interleaved (default 3)")
    cli.add_daemon_args(p)
    return p.parse_args(argv)


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_stream(url: str, api: str, model: str, i: int, tokens: int) -> int:
    """Tokens of one stream, as the API's own final figures count them."""
    question = [{"role": "user", "content": f"Stream {i}: tell me a long story"}]
    if api == "openai":
        path = "v1/chat/completions"
        body: dict[str, Any] = {"messages": question, "max_tokens": tokens, "ignore_eos": True, "stream": True}
        body["stream_options"] = {"include_usage": True}
    else:
        path = "api/chat"
        body = {"model": model, "messages": question, "options": {"num_predict": tokens, "ignore_eos": True}}
    got = 0
    timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url + path, json=body) as reply:
        if reply.status != 200:
            raise BenchError(f"{api} stream {i}: HTTP {reply.status}: {(await reply.text())[:500]}")
        async for raw in reply.content:
            line = raw.strip()
            if api == "openai" and line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage")
                got = usage["completion_tokens"] if usage else got
            elif api == "ollama" and line:
                part = json.loads(line)
                if "error" in part:
                    raise BenchError(f"ollama stream {i}: {part['error']}")
                got = part.get("eval_count", got)
    if got != tokens:
        raise BenchError(f"{api} stream {i} streamed {got} tokens, not {tokens}")
    return got


async def run(url: str, api: str, model: str, args: argparse.Namespace, pid: int) -> dict[str, float]:
    cpu0, t0 = cpu_s(pid), time.monotonic()
    counts = await asyncio.gather(*(one_stream(url, api, model, i, args.tokens) for i in range(args.streams)))
    wall, cpu = time.monotonic() - t0, cpu_s(pid) - cpu0
    total = sum(counts)
    return {"bridge_cpu_us_per_token": cpu / total * 1e6, "client_tok_s": total / wall}


async def measure(url: str, args: argparse.Namespace, pid: int) -> dict[str, list[dict[str, float]]]:
    async with aiohttp.ClientSession() as session, session.get(url + "api/tags") as tags:
        model = (await tags.json())["models"][0]["model"]
    await run(url, "ollama", model, argparse.Namespace(streams=1, tokens=8), pid)  # warm both paths
    await run(url, "openai", model, argparse.Namespace(streams=1, tokens=8), pid)
    runs: dict[str, list[dict[str, float]]] = {api: [] for api in APIS}
    for r in range(args.rounds):
        for api in APIS if r % 2 == 0 else APIS[::-1]:
            runs[api].append(await run(url, api, model, args, pid))
            log(f"round {r + 1} {api}: {runs[api][-1]}")
    return runs


def bench(args: argparse.Namespace) -> dict[str, Any]:
    model_path = cli.model_dir(args.model)
    bridge: Bridge | None = None
    with serving(Daemon(str(model_path), args.serve_arg, log), args.ready_timeout) as daemon:
        bridge = Bridge(daemon.socket)
        try:
            url = bridge.start()
            assert bridge.proc is not None
            runs = asyncio.run(measure(url, args, bridge.proc.pid))
        finally:
            bridge.stop()
    result: dict[str, Any] = {"bench": "web_apis", "model": model_info(model_path), "machine": machine()}
    result["settings"] = {"streams": args.streams, "tokens": args.tokens, "rounds": args.rounds}
    for api in APIS:
        result[api] = {
            key: rnd(statistics.median(r[key] for r in runs[api]), 1) for key in ("bridge_cpu_us_per_token", "client_tok_s")
        }
        result[api]["rounds"] = [{k: rnd(v, 1) for k, v in r.items()} for r in runs[api]]
    result["ollama_over_openai_cpu"] = rnd(
        result["ollama"]["bridge_cpu_us_per_token"] / result["openai"]["bridge_cpu_us_per_token"], 2
    )
    result["bridge_exit_code"] = bridge.exit_code
    result["tracebacks"] = daemon.final_log.count("Traceback") + bridge.log_text().count("Traceback")
    return result


if __name__ == "__main__":
    sys.exit(run_main("web_apis", bench, parse_args(sys.argv[1:])))
