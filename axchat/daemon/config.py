"""`axchat serve` settings: the flags, their defaults, and the parsed result."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from axchat.protocol.v1 import DEFAULT_MAX_FRAME_BYTES


@dataclass(frozen=True)
class ServeConfig:
    model: str | None  # None: the default model (built on first use)
    backend: str = "torch"
    device: str = "auto"
    dtype: str = "auto"
    socket: str | None = None
    context: int | None = None
    threads: int | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    drain_timeout_s: float = 10.0
    log_level: str = "info"
    max_running: int | None = None  # None: what the backend can batch
    max_queued: int = 32
    max_per_client: int = 8
    prefix_cache_mb: int = 256
    client_timeout_s: float = 30.0
    build_root: str | None = None  # aipu: where the SDK's compiled models live
    aipu_device: str | None = None  # aipu: which card; None: the first
    aipu_runtime: str | None = None  # aipu: real or emulator; None: $AXCHAT_AIPU_RUNTIME, else real


def default_threads() -> int:
    """Cores this process may use (affinity/cgroup aware), leaving one for the event
    loop and the actors when there are enough to spare."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return cores - 1 if cores >= 4 else cores


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axchat serve", description="Run the axchat daemon: load a model once, serve many clients.")
    p.add_argument("--model", help="local model directory or Hugging Face hub id (default: the built-in tiny test model)")
    p.add_argument("--backend", default="torch", choices=["torch", "aipu"], help="device backend (default: torch; --device aipu implies aipu)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, or aipu for an Axelera Metis card (default: auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--socket", help="socket path or tcp:// endpoint (default: $AXCHAT_SOCKET or $XDG_RUNTIME_DIR/axchat/axchat.sock)")
    p.add_argument("--context", type=int, help="context length in tokens (default: the model's)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: usable cores, minus one when 4 or more)")
    p.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES, help="largest frame a client may send")
    p.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to let requests finish on SIGTERM")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--max-running", type=int, help="sequences on the device at once (default: the backend's batch)")
    p.add_argument("--max-queued", type=int, default=32, help="requests waiting for a slot, all clients together")
    p.add_argument("--max-per-client", type=int, default=8, help="requests running or waiting, per client")
    p.add_argument("--client-timeout", type=float, default=30.0, help="cancel requests of a client silent this long (0: never)")
    p.add_argument("--prefix-cache-mb", type=int, default=256, help="memory for kept conversation KV (0 turns it off)")
    aipu = p.add_argument_group("aipu (Axelera Metis)")
    aipu.add_argument("--build-root", help="the Voyager SDK's build directory (default: $AXELERA_FRAMEWORK/build)")
    aipu.add_argument("--aipu-device", help="card to use, e.g. metis-0:1:0 (default: the first)")
    aipu.add_argument(
        "--aipu-runtime", choices=["real", "emulator"], help="real SDK or the emulated card (default: $AXCHAT_AIPU_RUNTIME or real)"
    )
    return p


def parse(argv: list[str]) -> ServeConfig:
    args = build_parser().parse_args(argv)
    return ServeConfig(
        model=args.model,
        backend="aipu" if args.device == "aipu" else args.backend,
        device=args.device,
        dtype=args.dtype,
        socket=args.socket,
        context=args.context,
        threads=args.threads or default_threads(),
        max_frame_bytes=args.max_frame_bytes,
        drain_timeout_s=args.drain_timeout,
        log_level=args.log_level,
        max_running=args.max_running,
        max_queued=args.max_queued,
        max_per_client=args.max_per_client,
        prefix_cache_mb=args.prefix_cache_mb,
        client_timeout_s=args.client_timeout,
        build_root=args.build_root,
        aipu_device=args.aipu_device,
        aipu_runtime=args.aipu_runtime,
    )
