"""Fuzzed frames against a daemon while good clients stream: nothing a client sends may hurt another.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/fuzz.py --model DIR [--frames 10000] [--good 2] [--seed 0]

One daemon is started on DIR. --good clients, each on its own connection, stream long
greedy answers for the whole run (a finished answer is followed by the next at once).
A fuzzer, on another connection, sends --frames frames one at a time, drawn from:
random bytes, wrong frame counts, wrong field types, unknown types, deep nesting,
huge strings (up to the frame limit and beyond it), absurd sampling values, and a few
valid requests with odd but legal settings. After each frame it waits (with a deadline)
for the reply the protocol promises; a request that starts streaming is cancelled.

Counted: `crashes` (the daemon exited), `internal` (error replies or failed `done`s with
code `internal`), `no_reply` (frames the protocol answers that got no answer in time),
`tracebacks` in the daemon's log, and the good clients' largest gap between two
deltas of one answer (`good_max_gap_ms`), with their deltas before and during fuzzing.

Prints ONE JSON object on stdout; progress goes to stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
from harness import cli
from harness.daemon import Daemon
from harness.machine import machine, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.stream import Stream, greedy, stream

log = Log("fuzz")
REPLY_TIMEOUT_S = 30.0
pack = msgspec.msgpack.encode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("fuzz", __doc__)
    p.add_argument("--frames", type=int, default=10_000, help="fuzzed frames to send (default 10000)")
    p.add_argument("--good", type=int, default=2, help="good clients streaming meanwhile (default 2)")
    p.add_argument("--good-tokens", type=int, default=200, help="tokens per good answer (default 200)")
    p.add_argument("--seed", type=int, default=0)
    cli.add_daemon_args(p)
    return p.parse_args(argv)


# ---------------------------------------------------------------- frames


def deep(n: int) -> bytes:
    return b"\x91" * n + b"\xc0"


def envelope(rid: str, v: int = 1) -> bytes:
    return pack({"id": rid, "v": v})


ABSURD = [
    {"temperature": 1e308},
    {"temperature": -1.0},
    {"temperature": float("nan")},
    {"max_tokens": 2**64 - 1},
    {"max_tokens": 0},
    {"max_tokens": -5},
    {"top_k": -1},
    {"top_p": 7.0},
    {"min_p": -0.5},
    {"repetition_penalty": 0.0},
    {"seed": -1},
    {"seed": 2**64 - 1},
    {"stop": [""]},
    {"stop": ["x" * 100_000]},
    {"stop": ["a"] * 1000},
    {"stop": 5},
    {"ignore_eos": "yes"},
]


class Fuzz:
    """Makes one frame list per call; `expects_reply` says whether the protocol answers it."""

    def __init__(self, rng: random.Random, max_frame: int) -> None:
        self.rng = rng
        self.max_frame = max_frame

    def make(self) -> tuple[str, list[bytes], bool]:
        kind = self.rng.choice(
            [
                "random_bytes",
                "frame_count",
                "wrong_types",
                "unknown_type",
                "deep",
                "huge",
                "absurd",
                "odd_valid",
                "envelope",
            ]
        )
        rid = uuid.uuid4().hex[:10]
        frames, expects = getattr(self, kind)(rid)
        if frames == [b""]:
            expects = False  # a lone empty frame: ZeroMQ's own disconnect notice, never answered
        return kind, frames, expects

    def random_bytes(self, rid: str) -> tuple[list[bytes], bool]:
        n = self.rng.choice([1, 2, 2, 3])
        return [self.rng.randbytes(self.rng.randint(0, 64)) for _ in range(n)], True

    def frame_count(self, rid: str) -> tuple[list[bytes], bool]:
        body = pack({"type": "ping"})
        frames = self.rng.choice([[envelope(rid)], [envelope(rid), body, body], [envelope(rid), body, b"", b"x"]])
        return frames, True

    def wrong_types(self, rid: str) -> tuple[list[bytes], bool]:
        body = self.rng.choice(
            [
                {"type": "generate", "messages": "not a list"},
                {"type": "generate", "messages": [{"role": 5, "content": "x"}]},
                {"type": "generate", "messages": [{"role": "robot", "content": "x"}]},
                {"type": "generate", "prompt": 12},
                {"type": "generate", "prompt": "x", "sampling": []},
                {"type": "generate", "prompt": "x", "user": 7},
                {"type": "hello", "protocol": 1},
                {"type": 5},
                {"no": "type"},
                [1, 2, 3],
                "just a string",
            ]
        )
        return [envelope(rid), pack(body)], True

    def unknown_type(self, rid: str) -> tuple[list[bytes], bool]:
        name = self.rng.choice(["make_coffee", "x" * self.rng.randint(1, 200_000), "", "GENERATE"])
        return [envelope(rid), pack({"type": name})], True

    def deep(self, rid: str) -> tuple[list[bytes], bool]:
        depth = self.rng.choice([100, 1000, 10_000, 100_000])
        where = self.rng.choice(["body-field", "envelope", "sampling"])
        if where == "envelope":
            return [b"\x82\xa2id\xa1r\xa1x" + deep(depth), pack({"type": "ping"})], True
        if where == "sampling":
            return [envelope(rid), b"\x83\xa4type\xa8generate\xa6prompt\xa1x\xa8sampling" + deep(depth)], True
        return [envelope(rid), b"\x82\xa4type\xa8generate\xa5extra" + deep(depth)], True

    def huge(self, rid: str) -> tuple[list[bytes], bool]:
        size = self.rng.choice([self.max_frame // 2, self.max_frame - 64, self.max_frame + 10, 3 * self.max_frame])
        what = self.rng.choice(["prompt", "id", "message"])
        if what == "id":
            return [envelope("i" * size), pack({"type": "ping"})], True
        if what == "message":
            body = {"type": "generate", "messages": [{"role": "user", "content": "w " * (size // 2)}]}
        else:
            body = {"type": "generate", "prompt": "w " * (size // 2)}
        return [envelope(rid), pack(body)], True

    def absurd(self, rid: str) -> tuple[list[bytes], bool]:
        sampling = self.rng.choice(ABSURD)
        return [envelope(rid), pack({"type": "generate", "prompt": "hello", "sampling": sampling})], True

    def odd_valid(self, rid: str) -> tuple[list[bytes], bool]:
        body = self.rng.choice(
            [
                {"type": "generate", "prompt": "\x00\x01 \ud7ff \U0001f600", "sampling": {"max_tokens": 2}},
                {"type": "generate", "messages": [{"role": "assistant", "content": ""}], "sampling": {"max_tokens": 1}},
                {"type": "generate", "prompt": "hi", "sampling": {"temperature": 50.0, "top_k": 1, "max_tokens": 3}},
                {"type": "generate", "prompt": "hi", "user": "u" * 256, "sampling": {"max_tokens": 1}},
                {"type": "generate", "prompt": "hi", "model": "nope"},
                {"type": "status"},
                {"type": "ping"},
                {"type": "hello", "protocol": "1.99"},
                {"type": "hello", "protocol": "2.0"},
            ]
        )
        return [envelope(rid, v=self.rng.choice([1, 1, 1, 2])), pack(body)], True

    def envelope(self, rid: str) -> tuple[list[bytes], bool]:
        env = self.rng.choice([pack({"id": 5}), pack({"v": 1}), pack([rid]), pack({"id": rid, "v": "1"}), b""])
        if env == b"" and self.rng.random() < 0.5:
            return [b""], False
        return [env, pack({"type": "ping"})], True


# ---------------------------------------------------------------- run


async def good_client(socket: str, index: int, tokens: int, stop: asyncio.Event, answers: list[Stream]) -> None:
    from axchat.aclient import AsyncClient
    from axchat.protocol import v1

    client = AsyncClient(socket, connect_timeout_s=30.0)
    try:
        await client.hello()
        n = 0
        while not stop.is_set():
            n += 1
            rec = Stream()
            answers.append(rec)
            req = v1.Generate(
                messages=[v1.ChatMessage(role="user", content=filler(12, f"good{index}.{n}"))], sampling=greedy(tokens)
            )
            task = asyncio.create_task(stream(client, req, 300.0, f"good client {index} answer {n}", rec=rec))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                break
            task.result()
    finally:
        await client.close()


async def fuzz(args: argparse.Namespace, daemon: Daemon) -> dict[str, Any]:
    import zmq
    import zmq.asyncio

    from axchat.protocol import v1

    rng = random.Random(args.seed)
    ctx = zmq.asyncio.Context()
    stop = asyncio.Event()
    answers: list[list[Stream]] = [[] for _ in range(args.good)]
    goods = [
        asyncio.create_task(good_client(daemon.socket, i, args.good_tokens, stop, answers[i])) for i in range(args.good)
    ]
    counts: dict[str, int] = {}
    internal = no_reply = crashed_at = 0
    sock = None
    started = time.monotonic()
    try:
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not all(a and a[0].first for a in answers) and time.monotonic() < deadline:
            if any(g.done() for g in goods):
                for g in goods:
                    if g.done():
                        g.result()
            await asyncio.sleep(0.05)  # polling the good clients' progress, with a deadline
        fuzz_from = time.monotonic()
        with_frames = Fuzz(rng, daemon_frame_limit(args))
        sock = new_dealer(ctx, daemon.socket)
        for i in range(args.frames):
            kind, frames, expects = with_frames.make()
            counts[kind] = counts.get(kind, 0) + 1
            await sock.send_multipart(frames)
            if frames[0] == b"" and len(frames) == 1:
                # The daemon takes a lone empty frame as this peer's disconnect notice;
                # start afresh so later frames are not answered to a forgotten peer.
                sock.close(linger=0)
                sock = new_dealer(ctx, daemon.socket)
            if not expects:
                continue
            answered, codes = await await_reply(sock, v1)
            internal += codes.count("internal")
            if not answered:
                if daemon.proc is not None and daemon.proc.poll() is not None:
                    crashed_at = i + 1
                    break
                no_reply += 1
                log(f"frame {i} ({kind}) got no reply")
                sock.close(linger=0)
                sock = new_dealer(ctx, daemon.socket)
            if (i + 1) % 1000 == 0:
                log(f"{i + 1} frames sent")
        fuzz_until = time.monotonic()
    finally:
        stop.set()
        results = await asyncio.gather(*goods, return_exceptions=True)
        if sock is not None:
            sock.close(linger=0)
        ctx.term()
    errors = [r for r in results if isinstance(r, BaseException)]
    gaps = [
        (b[0], b[0] - a[0])
        for recs in answers
        for rec in recs
        for a, b in zip(rec.deltas, rec.deltas[1:], strict=False)
    ]
    during = [gap for end, gap in gaps if fuzz_from <= end <= fuzz_until]
    outside = [gap for end, gap in gaps if not fuzz_from <= end <= fuzz_until]
    return {
        "frames": args.frames,
        "kinds": counts,
        "crashes": 1 if crashed_at else 0,
        "crashed_after_frames": crashed_at or None,
        "internal": internal,
        "no_reply": no_reply,
        "good_client_errors": [str(e) for e in errors],
        "good_answers": sum(len(a) for a in answers),
        "good_max_gap_ms": rnd(max(during, default=0.0) * 1e3),
        "good_max_gap_ms_outside_fuzzing": rnd(max(outside, default=0.0) * 1e3),
        "fuzz_s": rnd(fuzz_until - fuzz_from),
        "wall_s": rnd(time.monotonic() - started),
    }


def daemon_frame_limit(args: argparse.Namespace) -> int:
    from axchat.protocol import v1

    for i, arg in enumerate(args.serve_arg):
        if arg == "--max-frame-bytes" and i + 1 < len(args.serve_arg):
            return int(args.serve_arg[i + 1])
        if arg.startswith("--max-frame-bytes="):
            return int(arg.split("=", 1)[1])
    return v1.DEFAULT_MAX_FRAME_BYTES


def new_dealer(ctx: Any, socket: str) -> Any:
    import zmq

    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("ipc://" + socket)
    return sock


async def await_reply(sock: Any, v1: Any) -> tuple[bool, list[str]]:
    """Read until a terminal reply (cancelling a request that started); (answered, the
    error codes seen)."""
    codes: list[str] = []
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not await sock.poll(int(left * 1000)):
            return False, codes
        raw_env, raw_body = await sock.recv_multipart()
        env = v1.decode_envelope(raw_env)
        body = v1.decode_daemon_body(raw_body)
        if isinstance(body, v1.Pong) and env.id == "":
            continue  # the daemon's liveness probe, not an answer
        if isinstance(body, v1.Error):
            codes.append(body.code)
        elif isinstance(body, v1.Done) and body.error is not None:
            codes.append(body.error.code)
        elif not isinstance(body, v1.TERMINAL):
            await sock.send_multipart(v1.encode(v1.Envelope(id=env.id), v1.Cancel()))
            continue
        return True, codes


def bench(args: argparse.Namespace) -> dict[str, Any]:
    daemon = Daemon(args.model, args.serve_arg, log)
    try:
        daemon.start(args.ready_timeout)
        result = asyncio.run(fuzz(args, daemon))
        crashed = daemon.proc is not None and daemon.proc.poll() is not None
    finally:
        warnings: list[str] = []
        try:
            warnings = daemon.finish()
        except BenchError as exc:
            log(str(exc))
    text = daemon.final_log
    result["crashes"] = max(result["crashes"], 1 if crashed else 0)
    return {
        "bench": "fuzz",
        "model": model_info(Path(args.model)),
        "machine": machine(),
        **result,
        "tracebacks": text.count("Traceback"),
        "daemon_exit_code": daemon.exit_code,
        "daemon_log_bytes": len(text.encode()),
        "daemon_warning_lines": len(warnings),
    }


if __name__ == "__main__":
    sys.exit(run_main("fuzz", bench, parse_args(sys.argv[1:])))
