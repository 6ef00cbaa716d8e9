"""Many clients on a batch-1 device: `axchat serve --device aipu` over the emulated
Metis card, 1 and then 4 clients each asking in turn. Prints one JSON object: per
request queue wait and TTFT, total throughput, and the daemon's own overhead next to
the device's time (the card serves one sequence at a time, so with 4 clients it
should be busy nearly all of the wall time)."""

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


def start_daemon(model: str, socket: str, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "axchat", "serve", "--model", model, "--socket", socket]
    cmd += ["--device", "aipu", "--aipu-runtime", "emulator", "--log-level", "warning"]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="local HF model directory (the emulator runs it)")
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args(argv)
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
