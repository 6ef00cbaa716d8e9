"""`axchat status`: what the daemon serves and what it is doing, for people or `--json`."""

from __future__ import annotations

import argparse
import json
import sys
import time

import msgspec

from axchat import curve_keys
from axchat.connection import DaemonUnavailable, RequestFailed, connect

EXIT_NO_DAEMON = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axchat status", description="Show the axchat daemon's model and load.")
    p.add_argument("--socket", help="daemon socket path or endpoint")
    curve_keys.add_key_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    return p


def _human(status: dict[str, object]) -> str:
    temp = status.get("device_temp_c")
    uptime = float(status["uptime_s"])  # type: ignore[arg-type]
    return "\n".join(
        [
            f"model:    {status['model']} ({status['backend']} on {status['device']}, {status['dtype']})",
            f"context:  {status['context_length']} tokens",
            f"memory:   {_residency(status)}",
            f"state:    {status['state']}, up {uptime:.0f}s, pid {status['pid']}",
            f"requests: {status['running']} running, {status['queued']} queued, {status['requests_total']} served",
            f"tokens:   {status['completion_tokens_total']} generated; {status['kv_sequences']} KV sequence(s) held",
            f"drafts:   {status.get('draft_accepted_total', 0)} of {status.get('draft_proposed_total', 0)} proposed "
            "tokens kept (speculative decoding)",
            f"host:     CPU {status['cpu_percent']:.1f}%, RSS {int(status['rss_bytes']) / 2**20:.0f} MiB, "  # type: ignore[call-overload]
            f"temp {'n/a' if temp is None else f'{temp:.1f}°C'}",
            f"rate:     {status.get('tokens_per_s', 0.0):.1f} tokens/s over the last 10s; "
            f"slots {status.get('max_running', 0)}, queue limit {status.get('max_queued', 0)}",
            f"cache:    {status.get('prefix_cache_entries', 0)} kept conversation(s), "
            f"{int(status.get('prefix_cache_bytes', 0)) / 2**20:.1f} MiB",  # type: ignore[call-overload]
            *_memory_lines(status),
            *_decode_lines(status),
            *_device_lines(status.get("devices") or []),  # type: ignore[arg-type]
            *_request_lines(status.get("requests") or []),  # type: ignore[arg-type]
        ]
    )


def _residency(status: dict[str, object], now: float | None = None) -> str:
    """Whether the model is on the device and when keep-alive will unload it."""
    if status.get("load_stage") is not None:
        return f"model loading again ({status['load_stage']})"
    if not status.get("loaded", True):
        return "model unloaded after idling; the next request loads it"
    unloads_at = status.get("unloads_at")
    if unloads_at is None:
        return "model loaded" + (" (busy)" if status.get("running") or status.get("queued") else "")
    left = max(0.0, float(unloads_at) - (time.time() if now is None else now))  # type: ignore[arg-type]
    return f"model loaded; unloads in {left:.0f}s if no request comes"


def _memory_lines(status: dict[str, object]) -> list[str]:
    """The RSS by part, where the backend planned its memory."""
    parts = [int(status.get(key, 0) or 0) for key in ("weights_bytes", "running_kv_bytes", "prefix_kv_bytes")]  # type: ignore[call-overload]
    if not any(parts):
        return []
    weights, running, prefixes = (p / 2**20 for p in parts)
    other = max(0, int(status["rss_bytes"]) - sum(parts)) / 2**20  # type: ignore[call-overload]
    return [f"parts:    weights {weights:.0f} MiB, running KV {running:.0f} MiB, kept-prefix KV {prefixes:.0f} MiB, rest {other:.0f} MiB"]


def _decode_lines(status: dict[str, object]) -> list[str]:
    """How a decode step runs and what it costs; absent for backends that do not say."""
    if not status.get("decode_path"):
        return []
    compiled = f"compiled in {status.get('compile_s', 0.0):.1f}s" if status.get("compiled") else "not compiled"
    return [
        f"decode:   {status['decode_path']} path, {status.get('threads', 0)} thread(s), {compiled}; "
        f"step {status.get('step_ms', 0.0):.1f} ms + {status.get('overhead_ms_per_token', 0.0):.2f} ms daemon overhead per token",
        f"chosen:   {status.get('dtype_reason', '')}",
    ]


def _device_lines(devices: list[dict[str, object]]) -> list[str]:
    """One line per device of a daemon that drives several (`--devices`)."""
    lines = []
    for d in devices:
        temp = d.get("temperature_c")
        if d["state"] == "down":
            lines.append(f"  {d['name']:<9} {d['label']:<24} down: {d.get('reason', '')}")
            continue
        lines.append(
            f"  {d['name']:<9} {d['label']:<24} {d['state']:<8} {d['running']}/{d['max_running']} running, "
            f"{d['queued']} queued, {d['tokens_per_s']:.1f} tokens/s, "  # type: ignore[str-format]
            f"temp {'n/a' if temp is None else f'{temp:.1f}°C'}, {d['requests_total']} placed "
            f"({d['affinity_hits']} beside their conversation's prefix)"
        )
    return ["devices:", *lines] if lines else []


def _request_lines(requests: list[dict[str, object]]) -> list[str]:
    lines = []
    for r in requests:
        where = f"#{r['queue_position']} in line" if r["state"] == "queued" else str(r["state"])
        lines.append(
            f"  {r['id']:<24} {where:<12} prompt {r['prefilled_tokens']}/{r['prompt_tokens']}, "
            f"reply {r['completion_tokens']}/{r['max_tokens']}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    curve_keys.use_key_flags(args)
    try:
        with connect(args.socket, connect_timeout_s=args.timeout) as client:
            # Every field, defaults too (the wire omits them): a script reads `loaded` as is.
            status = msgspec.to_builtins(msgspec.structs.asdict(client.status()))
    except DaemonUnavailable as exc:
        print(f"axchat status: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except RequestFailed as exc:
        print(f"axchat status: {exc}", file=sys.stderr)
        return 1
    status.pop("type", None)
    print(json.dumps(status) if args.json else _human(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
