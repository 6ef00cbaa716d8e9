"""Many clients on a batch-1 device: `axchat serve --device aipu` over the emulated
Metis card, 1 and then 4 clients each asking in turn. Prints one JSON object: per
request queue wait and TTFT, total throughput, and the daemon's own overhead next to
the device's time (the card serves one sequence at a time, so with 4 clients it
should be busy nearly all of the wall time).

With `--cards 1,2,4 --clients 8` it measures several emulated cards in one daemon
(`--devices all`) instead: each card takes `--step-ms` per run, asleep (it models a card's
timing, it measures no card). Each client holds one multi-turn conversation, a turn at a
time, for `--seconds`; tokens are counted as they arrive until then. Prints aggregate
tokens/s per card count and its ratio to one card, per-client max/min tokens, and how
often a later turn was served by the card that served the conversation's previous one."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from axchat.protocol import v1

READY_TIMEOUT_S = 180.0
REPLY_TIMEOUT_S = 300.0


def start_daemon(model: str, socket: str, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "axchat", "serve", "--model", model, "--socket", socket]
    cmd += ["--device", "aipu", "--aipu-runtime", "emulator", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    deadline = time.monotonic() + READY_TIMEOUT_S
    with zmq.Context() as ctx:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            if Path(socket).exists() and ask_status(ctx, socket) is not None:
                return proc
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("daemon was not ready in time")


def ask_status(ctx: zmq.Context, socket: str) -> v1.StatusReply | None:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("ipc://" + socket)
    try:
        sock.send_multipart(v1.encode(v1.Envelope(id="s"), v1.Status()))
        if not sock.poll(1000):
            return None
        body = v1.decode_daemon_body(sock.recv_multipart()[1])
        return body if isinstance(body, v1.StatusReply) else None
    finally:
        sock.close()


def one_client(socket: str, n_requests: int, max_tokens: int, index: int, out: list[dict[str, float]]) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("ipc://" + socket)
    try:
        for r in range(n_requests):
            rid = uuid.uuid4().hex[:8]
            body = v1.Generate(
                messages=[v1.ChatMessage(role="user", content=f"Client {index}, question {r}: tell me about rivers.")],
                sampling=v1.Sampling(max_tokens=max_tokens, ignore_eos=True),
            )
            sent = time.perf_counter()
            sock.send_multipart(v1.encode(v1.Envelope(id=rid), body))
            first: float | None = None
            while True:
                if not sock.poll(int(REPLY_TIMEOUT_S * 1000)):
                    raise RuntimeError(f"no reply for {rid} in {REPLY_TIMEOUT_S}s")
                reply = v1.decode_daemon_body(sock.recv_multipart()[1])
                if isinstance(reply, v1.Delta) and first is None:
                    first = time.perf_counter()
                if isinstance(reply, v1.Error):
                    raise RuntimeError(f"request failed: {reply.code}: {reply.message}")
                if isinstance(reply, v1.Done):
                    break
            wall_ms = (time.perf_counter() - sent) * 1e3
            s = reply.stats
            out.append(
                {
                    "wall_ms": wall_ms,
                    "client_ttft_ms": ((first or time.perf_counter()) - sent) * 1e3,
                    "queue_ms": s.queue_ms,
                    "ttft_ms": s.ttft_ms,
                    "prefill_ms": s.prefill_ms,
                    "device_ms": s.generate_ms,  # prefill start to last token: the card's time
                    "overhead_ms": wall_ms - s.queue_ms - s.generate_ms,
                    "completion_tokens": s.completion_tokens,
                }
            )
    finally:
        sock.close()
        ctx.term()


def run_round(socket: str, clients: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    threads = [
        threading.Thread(target=one_client, args=(socket, per_client, max_tokens, i, results)) for i in range(clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(REPLY_TIMEOUT_S * per_client)
    wall_s = time.perf_counter() - t0
    if len(results) != clients * per_client:
        raise SystemExit(f"{clients} clients: only {len(results)} of {clients * per_client} requests finished")

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 2)

    device_s = sum(r["device_ms"] for r in results) / 1e3
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": round(wall_s, 3),
        "tokens_per_s": round(sum(r["completion_tokens"] for r in results) / wall_s, 2),
        "median_queue_ms": med("queue_ms"),
        "max_queue_ms": round(max(r["queue_ms"] for r in results), 2),
        "median_ttft_ms": med("ttft_ms"),
        "median_client_ttft_ms": med("client_ttft_ms"),
        "median_device_ms": med("device_ms"),
        "median_overhead_ms": med("overhead_ms"),
        "device_busy_fraction": round(device_s / wall_s, 3),
    }


# ------------------------------------------------------------- several cards (--cards)

FIRST_TURN = "Client {i} here. Tell me a long story about rivers, bridges, the sea and the trains along the coast."
NEXT_TURN = "Go on, please."


def conversation_client(
    socket: str, index: int, max_tokens: int, start: float, deadline: float, out: dict[int, dict[str, Any]]
) -> None:
    """One conversation, a turn at a time, until `deadline`: tokens counted as they
    arrive before it; the turn in flight then is cancelled."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("ipc://" + socket)
    history = [v1.ChatMessage(role="user", content=FIRST_TURN.format(i=index))]
    tokens = 0
    turns: list[dict[str, Any]] = []
    try:
        while time.perf_counter() < start:
            time.sleep(0.001)
        while time.perf_counter() < deadline:
            rid = uuid.uuid4().hex[:8]
            body = v1.Generate(messages=history, sampling=v1.Sampling(max_tokens=max_tokens, ignore_eos=True))
            sock.send_multipart(v1.encode(v1.Envelope(id=rid), body))
            text = ""
            cancelled = False
            while True:
                left = deadline - time.perf_counter()
                if left <= 0 and not cancelled:
                    sock.send_multipart(v1.encode(v1.Envelope(id=rid), v1.Cancel()))
                    cancelled = True
                if not sock.poll(int(max(left, 0) * 1000) + 1 if not cancelled else int(REPLY_TIMEOUT_S * 1000)):
                    if cancelled:
                        raise RuntimeError(f"client {index}: no reply to a cancel in {REPLY_TIMEOUT_S}s")
                    continue
                reply = v1.decode_daemon_body(sock.recv_multipart()[1])
                if isinstance(reply, v1.Delta):
                    text += reply.text
                    if time.perf_counter() < deadline:
                        tokens += len(reply.token_ids)
                elif isinstance(reply, v1.Error):
                    raise RuntimeError(f"client {index}: {reply.code}: {reply.message}")
                elif isinstance(reply, v1.Done):
                    break
            if reply.finish_reason == "error":
                raise RuntimeError(f"client {index}: {reply.error}")
            if reply.finish_reason != "cancelled":
                turns.append({"device": reply.stats.device, "cached_tokens": reply.usage.cached_tokens})
            history += [v1.ChatMessage(role="assistant", content=text), v1.ChatMessage(role="user", content=NEXT_TURN)]
        out[index] = {"tokens": tokens, "turns": turns}
    finally:
        sock.close()
        ctx.term()


def cards_round(args: argparse.Namespace, cards: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="axb-") as tmp:
        socket = str(Path(tmp) / "d.sock")
        env = {
            "AXCHAT_AIPU_EMULATOR_DIR": str(Path(tmp) / "card"),
            "AXCHAT_AIPU_EMULATOR_CARDS": ",".join(f"metis-{i}:1:0=16" for i in range(cards)),
            "AXCHAT_AIPU_EMULATOR_STEP_MS": args.step_ms,
            "HF_HUB_OFFLINE": "1",
        }
        daemon = start_daemon(args.model, socket, env, "--devices", "all")
        try:
            one_client(socket, 1, 2, 99, [])  # warm-up, untimed
            out: dict[int, dict[str, Any]] = {}
            start = time.perf_counter() + 0.5
            deadline = start + args.seconds
            threads = [
                threading.Thread(target=conversation_client, args=(socket, i, args.max_tokens, start, deadline, out))
                for i in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.seconds + REPLY_TIMEOUT_S)
            status = ask_status_retry(socket)
        finally:
            daemon.terminate()
            daemon.wait(30)
    if len(out) != args.clients:
        raise SystemExit(f"{cards} cards: only {len(out)} of {args.clients} clients finished")
    per_client = [out[i]["tokens"] for i in range(args.clients)]
    later = [
        (prev["device"], turn["device"], turn["cached_tokens"])
        for c in out.values()
        for prev, turn in zip(c["turns"], c["turns"][1:], strict=False)
    ]
    return {
        "cards": cards,
        "tokens": sum(per_client),
        "tokens_per_s": round(sum(per_client) / args.seconds, 2),
        "per_client_tokens": per_client,
        "per_client_max_over_min": round(max(per_client) / max(min(per_client), 1), 3),
        "later_turns": len(later),
        # One card: no placer, every turn is on it (stats.device is empty).
        "affinity_hit_rate": round(sum(a == b for a, b, _ in later) / len(later), 3) if later and cards > 1 else None,
        "later_turns_with_cached_tokens": sum(c > 0 for _, _, c in later),
        "placed_per_card": [d.requests_total for d in status.devices] if status is not None else [],
    }


def ask_status_retry(socket: str) -> v1.StatusReply | None:
    with zmq.Context() as ctx:
        for _ in range(5):
            status = ask_status(ctx, socket)
            if status is not None:
                return status
    return None


def cards_main(args: argparse.Namespace) -> int:
    counts = [int(c) for c in args.cards.split(",")]
    rounds = []
    for n in counts:
        print(f"{n} card(s), {args.clients} clients, {args.seconds}s ...", file=sys.stderr)
        rounds.append(cards_round(args, n))
    base = next((r["tokens_per_s"] for r in rounds if r["cards"] == 1), None)
    for r in rounds:
        r["ratio_vs_1_card"] = round(r["tokens_per_s"] / base, 3) if base else None
    print(
        json.dumps(
            {
                "model": args.model,
                "clients": args.clients,
                "max_tokens_per_turn": args.max_tokens,
                "seconds": args.seconds,
                "card_step_ms": args.step_ms,
                "rounds": rounds,
                "cpu_count": os.cpu_count(),
                "notes": "emulated cards: each run sleeps the card's time (AXCHAT_AIPU_EMULATOR_STEP_MS) on top of a "
                "CPU forward of the model; this models a card's timing, it measures no card. affinity_hit_rate: later "
                "turns served by the card that served the conversation's previous turn. The AIPU backend keeps no "
                "prefix cache (the card holds one sequence; a multi-token input restarts it), so cached_tokens stay 0 "
                "there; on backends with a prefix cache the same placement is what makes them > 0.",
            },
            indent=2,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="local HF model directory (the emulator runs it)")
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--max-tokens", type=int, help="tokens per request (default 32; with --cards 8 a turn)")
    p.add_argument("--cards", help="several emulated cards in one daemon, e.g. 1,2,4 (the multi-card bench)")
    p.add_argument("--clients", type=int, default=8, help="--cards: clients, one conversation each")
    p.add_argument("--seconds", type=float, default=60.0, help="--cards: measured time per card count")
    p.add_argument("--step-ms", default="100", help="--cards: the card's time per run, DECODE[,PER_PROMPT_TOKEN] ms")
    args = p.parse_args(argv)
    if args.cards:
        args.max_tokens = args.max_tokens or 8
        return cards_main(args)
    args.max_tokens = args.max_tokens or 32
    with tempfile.TemporaryDirectory(prefix="axb-") as tmp:
        socket = str(Path(tmp) / "d.sock")
        env = {"AXCHAT_AIPU_EMULATOR_DIR": str(Path(tmp) / "card"), "HF_HUB_OFFLINE": "1"}
        daemon = start_daemon(args.model, socket, env)
        try:
            one_client(socket, 1, 4, 99, [])  # warm-up, untimed
            rounds = [run_round(socket, n, args.requests_per_client, args.max_tokens) for n in (1, 4)]
        finally:
            daemon.terminate()
            daemon.wait(30)
    print(
        json.dumps(
            {
                "model": args.model,
                "max_tokens": args.max_tokens,
                "requests_per_client": args.requests_per_client,
                "rounds": rounds,
                "cpu_count": os.cpu_count(),
                "notes": "emulated card: device time is a CPU transformers forward; "
                "overhead = client wall - queue wait - device time (tokenize, transport, sampling hops)",
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
