"""axchat web against llama.cpp's own llama-server: same model file, same requests, one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/peers.py --model DIR [--clients 1,8] [--tokens 64] [--rounds 3]

llama-server is built once from the llama.cpp source the installed engine was compiled
from, with the same CPU flags (`bench/harness/llama_server.py`; minutes, then cached), and
is handed the very GGUF file the daemon loaded, with as many KV cells as the daemon has,
one slot per client of the largest count and the same threads:
`llama-server -m FILE -np 8 -c CELLS -t 2 -tb 2`. axchat runs as `axchat serve` (the
default engine and weight type, the same threads) behind `axchat web`.

Each round runs every client count against both servers in turn, the order alternating
(axchat first, then llama-server first; counts up, then down), so drift in the machine's
load hits both alike. N clients each send, at the same moment, one streamed
/v1/chat/completions request on a connection of their own: a prompt new in this round,
their own `user`, greedy, exactly --tokens tokens (`ignore_eos`), usage asked for.

Per server and client count: tokens/s = all completion tokens / (last [DONE] - the
requests' sending), the round's wall time, as serving benchmarks count throughput (a
server that starts some streams sooner is not charged for it); beside it
`decode_window_tok_s` = the same tokens / (last [DONE] - earliest first content), which
leaves out the prompts' time only when all streams start together. Per client tokens/s
= its tokens / ([DONE] - its first content); TTFT = send to the first content chunk,
client side; CPU = user + system seconds of the server's processes (daemon and bridge
for axchat) over its measured rounds, per generated token. Ratios are axchat web over
llama-server.

Beside the two servers, in the same interleaved rounds (`--sides`): `axchat native`, the
same requests straight to the daemon's socket with the reference async client (the
bridge's hop left out), and `bare unified` / `bare streams`, a batched greedy loop on the
engine alone in this process (bench/harness/bare_loop.py: the same GGUF, cells and
threads; the burst's prompts, as long as the daemon counted them, in one forward, then
decode steps) on the daemon's one KV pool and on llama-server's per-sequence streams:
what the engine allows each layout before any server's work. Their ratios to
llama-server come as `<side>_tok_s_ratio_c<N>` and `<side>_ttft_ratio_c<N>`.

Prints ONE JSON object on stdout; progress goes to stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import cli, llama_server
from harness.bare_loop import BareLoop
from harness.daemon import Daemon, bench_env, serving
from harness.http_stream import HttpStream, chat_stream, cpu_seconds, main_thread_cpu_seconds
from harness.machine import LoadAtStart, model_info
from harness.numbers import percentile, rnd
from harness.output import BenchError, Log, run_main, tail
from harness.prompts import filler
from harness.stream import Stream, Tally, greedy, stream

log = Log("peers")
SIDES = ("native", "bare_unified", "bare_streams")  # the optional ones, by their JSON names
LISTENING = re.compile(r"listening: (http://\S+/)")
LOADED = re.compile(r"loaded .* as (\S+), .*?(\d+) KV cells")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("peers", __doc__)
    cli.add_round_args(p, clients="1,8", rounds=3, rounds_help="rounds of every count on both servers")
    p.add_argument("--threads", type=int, default=2, help="threads of both servers (default 2)")
    p.add_argument(
        "--sides",
        default=",".join(SIDES),
        help=f"comma-separated sides to run besides axchat web and llama-server (default: {','.join(SIDES)})",
    )
    p.add_argument("--llama-server", help="a llama-server binary to use instead of the cached build")
    p.add_argument(
        "--build-only",
        action="store_true",
        help="build (or find) llama-server, print its path and stop (--model is not read)",
    )
    cli.add_daemon_args(p, timeout_help="seconds one round may take (default 600)")
    args = p.parse_args(argv)
    cli.check_round_args(p, args)
    return args


class Process:
    """A server process with a log file, stopped (SIGTERM, then kill) at the end."""

    def __init__(self, label: str, cmd: list[str], log_path: Path) -> None:
        self.label, self.cmd, self.log_path = label, cmd, log_path
        log(f"starting {label}: {' '.join(cmd)}")
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=bench_env()
            )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, ready: Any, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (found := ready()):
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.label} exited with status {self.proc.returncode}. Its log ends:\n" + tail(self.text())
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label} not ready after {timeout_s:.0f}s. Its log ends:\n" + tail(self.text()))
            time.sleep(0.1)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def daemon_gguf(model_dir: Path, kind: str) -> Path:
    """The GGUF file the daemon loaded: the model's own, else its converted copy."""
    from axchat.actors.backends.llamacpp import gguf_cache, load

    found = load.find_gguf(str(model_dir))
    path = found if found is not None else gguf_cache.cached_path(model_dir, kind)
    if not path.is_file():
        raise BenchError(f"the daemon's GGUF is not where expected: {path}")
    return path


async def one_round(
    url: str, model: str, n: int, rnd_i: int, args: argparse.Namespace, tokens: int
) -> list[HttpStream]:
    import aiohttp

    def body(i: int) -> dict[str, Any]:
        prompt = filler(args.prompt_words, salt=f"client{i} round{rnd_i}")
        return {
            "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
            "user": f"client{i}",
        }  # fmt: skip

    timeout = aiohttp.ClientTimeout(total=args.timeout)
    sessions = [aiohttp.ClientSession(timeout=timeout) for _ in range(n)]
    try:
        return await asyncio.gather(
            *(
                chat_stream(s, url + "v1/chat/completions", body(i), f"client {i + 1}/{n}")
                for i, s in enumerate(sessions)
            )
        )
    finally:
        await asyncio.gather(*(s.close() for s in sessions))


async def native_round(socket_path: str, n: int, rnd_i: int, args: argparse.Namespace, tokens: int) -> list[Stream]:
    """The same requests as `one_round`'s, straight to the daemon's socket, each client on
    a connection of its own."""
    from axchat.aclient import AsyncClient
    from axchat.protocol import v1

    clients = [AsyncClient(socket_path, connect_timeout_s=30.0) for _ in range(n)]
    try:
        await asyncio.gather(*(c.hello() for c in clients))
        requests = [
            v1.Generate(
                messages=[
                    v1.ChatMessage(role="user", content=filler(args.prompt_words, salt=f"client{i} round{rnd_i}"))
                ],
                sampling=greedy(tokens),
                user=f"client{i}",
            )
            for i in range(n)
        ]
        return await asyncio.gather(
            *(
                stream(c, r, args.timeout, f"native client {i + 1}/{n}")
                for i, (c, r) in enumerate(zip(clients, requests, strict=True))
            )
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def bare_side(name: str, loop: BareLoop, prompt_tokens: int) -> Side:
    async def rounds(n: int, rnd_i: int, args: argparse.Namespace, tokens: int) -> list[Tally]:
        # On this (main) thread, blocking the loop, which has nothing else to do meanwhile:
        # llama.cpp's OpenMP threads are a team per calling thread, and a pool's changing
        # worker threads would each start another team beside the idle, spinning ones.
        return loop.round([prompt_tokens] * n, tokens)

    return Side(name, "", "", {}, rounds=rounds)


def summarize(recs: Sequence[Tally | Stream], tokens: int) -> dict[str, Any]:
    for i, r in enumerate(recs):
        if r.completion_tokens != tokens or r.first is None:
            raise BenchError(
                f"client {i + 1} got {r.completion_tokens} tokens (wanted {tokens}), first content {r.first}"
            )
    start = min(r.first for r in recs if r.first is not None)
    end = max(r.done_at for r in recs if r.done_at is not None)
    rates = [r.tok_s() or 0.0 for r in recs]
    return {
        "tok_s": sum(r.completion_tokens for r in recs) / (end - min(r.sent for r in recs)),
        "decode_window_tok_s": sum(r.completion_tokens for r in recs) / (end - start),
        "client_tok_s": rates,
        "ttft_ms": [r.ttft_ms() for r in recs],
        "tokens": sum(r.completion_tokens for r in recs),
        "chunks": sum(r.chunks for r in recs),
    }


class Side:
    """One server under test: its URL, its processes' pids, and what it measured."""

    def __init__(
        self, name: str, url: str, model: str, pids: dict[str, int], loop_pid: int | None = None, rounds: Any = None
    ) -> None:
        """`loop_pid`: a process whose main thread's CPU is also counted apart (the
        daemon's event loop, where its actors run, beside the engine's threads).
        `rounds(n, rnd_i, args, tokens)`: a round's records (default: HTTP to `url`)."""
        self.name, self.url, self.model, self.pids, self.loop_pid = name, url, model, pids, loop_pid
        self.round = rounds or (lambda n, rnd_i, args, tokens: one_round(url, model, n, rnd_i, args, tokens))
        self.runs: dict[int, list[dict[str, Any]]] = {}
        self.cpu_s = dict.fromkeys(pids, 0.0)
        self.loop_s = 0.0
        self.tokens: dict[int, int] = {}
        self.cpu_by_n: dict[int, float] = {}

    async def measure(self, n: int, rnd_i: int, args: argparse.Namespace) -> dict[str, Any]:
        before = {k: cpu_seconds(p) for k, p in self.pids.items()}
        loop_before = main_thread_cpu_seconds(self.loop_pid) if self.loop_pid is not None else 0.0
        res = summarize(await self.round(n, rnd_i, args, args.tokens), args.tokens)
        used = {k: cpu_seconds(p) - before[k] for k, p in self.pids.items()}
        if self.loop_pid is not None:
            self.loop_s += main_thread_cpu_seconds(self.loop_pid) - loop_before
        for k, v in used.items():
            self.cpu_s[k] += v
        self.cpu_by_n[n] = self.cpu_by_n.get(n, 0.0) + sum(used.values())
        self.tokens[n] = self.tokens.get(n, 0) + res["tokens"]
        self.runs.setdefault(n, []).append(res)
        return res

    def figures(self) -> dict[str, Any]:
        med = statistics.median
        out: dict[str, Any] = {}
        for n, runs in sorted(self.runs.items()):
            ttfts = [x for r in runs for x in r["ttft_ms"]]
            mins = [min(r["client_tok_s"]) for r in runs]
            maxs = [max(r["client_tok_s"]) for r in runs]
            out[str(n)] = {
                "tok_s": rnd(med([r["tok_s"] for r in runs]), 2),
                "decode_window_tok_s": rnd(med([r["decode_window_tok_s"] for r in runs]), 2),
                "ttft_ms_p50": rnd(percentile(ttfts, 50)),
                "ttft_ms_p95": rnd(percentile(ttfts, 95)),
                "client_max_over_min": rnd(med([b / a for a, b in zip(mins, maxs, strict=True) if a > 0] or [0.0]), 2),
                "cpu_ms_per_token": rnd(1e3 * self.cpu_by_n[n] / self.tokens[n], 2) if self.pids else None,
                "tokens_per_chunk": rnd(sum(r["tokens"] for r in runs) / max(1, sum(r["chunks"] for r in runs)), 2),
                "tok_s_runs": [rnd(r["tok_s"], 2) for r in runs],
            }
        return out

    def cpu_ms_per_token(self) -> float | None:
        total = sum(self.tokens.values())
        return rnd(1e3 * sum(self.cpu_s.values()) / total, 2) if total else None


async def warm_up(side: Side, args: argparse.Namespace) -> None:
    log(f"warm-up of {side.name} (untimed)")
    await side.round(1, -1, args, 8)
    await side.round(max(args.client_counts), -2, args, 4)


async def run_all(sides: list[Side], args: argparse.Namespace) -> None:
    for side in sides:
        await warm_up(side, args)
    for rnd_i in range(args.rounds):
        counts = args.client_counts if rnd_i % 2 == 0 else list(reversed(args.client_counts))
        for n in counts:
            for side in sides if rnd_i % 2 == 0 else list(reversed(sides)):
                res = await side.measure(n, rnd_i, args)
                log(
                    f"round {rnd_i + 1}/{args.rounds}, {n} clients, {side.name}: {res['tok_s']:.1f} tok/s, "
                    f"ttft p50 {percentile(res['ttft_ms'], 50):.0f} ms"
                )


def optional_sides(
    args: argparse.Namespace, daemon: Daemon, gguf: Path, cells: int, loops: list[BareLoop]
) -> dict[str, Side]:
    """The `--sides` asked for, by their JSON names; the bare loops are appended to `loops`
    (to be closed)."""
    asked = [x for x in args.sides.split(",") if x]
    unknown = sorted(set(asked) - set(SIDES))
    if unknown:
        raise BenchError(f"unknown --sides {','.join(unknown)} (known: {','.join(SIDES)})")
    out: dict[str, Side] = {}
    if "native" in asked:
        out["native"] = Side(
            "axchat native", "", "", {"daemon": daemon.proc.pid} if daemon.proc else {},
            rounds=lambda n, rnd_i, a, tokens: native_round(daemon.socket, n, rnd_i, a, tokens),
        )  # fmt: skip
    bare = [x for x in asked if x.startswith("bare_")]
    if bare:
        # The daemon's own count of the requests' prompt tokens (template included).
        probe = asyncio.run(native_round(daemon.socket, 1, -3, args, 1))
        prompt_tokens = probe[0].done.usage.prompt_tokens
        for name in bare:
            loop = BareLoop(
                gguf,
                cells=cells,
                sequences=max(args.client_counts),
                threads=args.threads,
                unified=name == "bare_unified",
            )
            loops.append(loop)
            out[name] = bare_side(name.replace("_", " "), loop, prompt_tokens)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return rnd(a / b, 3) if a is not None and b else None


def bench(args: argparse.Namespace) -> dict[str, Any]:
    binary = Path(args.llama_server) if args.llama_server else llama_server.ensure(log)
    if args.build_only:
        return {"llama_server_binary": str(binary)}
    model_dir = cli.model_dir(args.model)
    load = LoadAtStart()
    work = Path(tempfile.mkdtemp(prefix="axchat-peers-"))
    daemon = Daemon(str(model_dir), [f"--threads={args.threads}", *args.serve_arg], log)
    procs: list[Process] = []
    loops: list[BareLoop] = []
    with serving(daemon, args.ready_timeout):
        loaded = LOADED.search(daemon.log_text())
        if loaded is None:
            raise BenchError(
                "the daemon's log has no `loaded ... as KIND, ... KV cells` line:\n" + tail(daemon.log_text())
            )
        kind, cells = loaded.group(1), int(loaded.group(2))
        gguf = daemon_gguf(model_dir, kind)
        try:
            web = Process(
                "axchat web",
                [sys.executable, "-m", "axchat", "web", "--port", "0", "--socket", daemon.socket],
                work / "web.log",
            )
            procs.append(web)
            web_url = web.wait_for(lambda: (m := LISTENING.search(web.text())) and m.group(1), args.ready_timeout)
            port = free_port()
            server_cmd = [
                str(binary), "-m", str(gguf), "-np", str(max(args.client_counts)), "-c", str(cells),
                "-t", str(args.threads), "-tb", str(args.threads), "--host", "127.0.0.1", "--port", str(port),
            ]  # fmt: skip
            server = Process("llama-server", server_cmd, work / "llama-server.log")
            procs.append(server)
            ls_url = f"http://127.0.0.1:{port}/"
            server.wait_for(lambda: health(ls_url + "health"), args.ready_timeout)
            assert daemon.proc is not None
            sides = [
                Side(
                    "axchat web",
                    web_url,
                    model_dir.name,
                    {"daemon": daemon.proc.pid, "bridge": web.proc.pid},
                    loop_pid=daemon.proc.pid,
                ),
                Side("llama-server", ls_url, model_dir.name, {"llama-server": server.proc.pid}),
            ]
            extra = optional_sides(args, daemon, gguf, cells, loops)
            sides += extra.values()
            asyncio.run(run_all(sides, args))
        finally:
            for proc in procs:
                proc.stop()
            for loop in loops:
                loop.close()
    ax, ls = sides[0], sides[1]
    ax_f, ls_f = ax.figures(), ls.figures()
    out: dict[str, Any] = {}
    for n in args.client_counts:
        a, b = ax_f[str(n)], ls_f[str(n)]
        out[f"tok_s_ratio_c{n}"] = ratio(a["tok_s"], b["tok_s"])
        out[f"ttft_ratio_c{n}"] = ratio(a["ttft_ms_p50"], b["ttft_ms_p50"])
    for name, side in extra.items():
        f = side.figures()
        for n in args.client_counts:
            out[f"{name}_tok_s_ratio_c{n}"] = ratio(f[str(n)]["tok_s"], ls_f[str(n)]["tok_s"])
            out[f"{name}_ttft_ratio_c{n}"] = ratio(f[str(n)]["ttft_ms_p50"], ls_f[str(n)]["ttft_ms_p50"])
        out[name] = f
    tokens = sum(ax.tokens.values())
    return {
        **out,
        "axchat_cpu_ms_per_token": ax.cpu_ms_per_token(),
        "llamaserver_cpu_ms_per_token": ls.cpu_ms_per_token(),
        "axchat_cpu_ms_per_token_by_process": {k: rnd(1e3 * v / tokens, 2) for k, v in ax.cpu_s.items()},
        "axchat_loop_cpu_ms_per_token": rnd(1e3 * ax.loop_s / tokens, 2),
        "axchat_web": ax_f,
        "llama_server": ls_f,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "kv_cells": cells,
        "gguf": str(gguf),
        "weight_type": kind,
        "llama_server_binary": str(binary),
        "llama_server_args": server_cmd[3:11],
        "model": model_info(model_dir),
        "serve_args": args.serve_arg,
        "machine": load.machine(),
        "daemon_log_warnings": daemon.warnings,
        "notes": load.notes(),
    }


def main(argv: list[str] | None = None) -> int:
    return run_main("peers", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
