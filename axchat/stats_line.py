"""The seed script's --show-stats line, shared by the daemon's log and `axchat ask --stats`."""

from __future__ import annotations

from axchat.protocol.v1 import Stats


def _duration(ms: float) -> str:
    # Milliseconds up to a second, as README shows them (`0.6ms`, not `636.3us`): one unit
    # for the short figures reads at a glance; seconds beyond.
    if ms >= 1000:
        return f"{ms / 1000:.3f}s"
    return f"{ms:.1f}ms"


def format_stats(stats: Stats) -> str:
    """`Tokenization: 0.4ms | Prefill: 3.1ms | TTFT: 0.573s | Gen: 2.111s | Tokens/sec: 9.95 | Tokens: 21`"""
    return (
        f"Tokenization: {_duration(stats.tokenize_ms)} | Prefill: {_duration(stats.prefill_ms)} | "
        f"TTFT: {stats.ttft_ms / 1000:.3f}s | Gen: {stats.generate_ms / 1000:.3f}s | "
        f"Tokens/sec: {stats.tokens_per_s:.2f} | Tokens: {stats.completion_tokens}"
    )


def format_host(stats: Stats) -> str:
    """The seed's second and third lines, joined: CPU and device temperature; then, where
    speculative decoding proposed any, `| Drafts: 12/20` (kept, of those verified)."""
    temp = "n/a" if stats.device_temp_c is None else f"{stats.device_temp_c:.1f}°C"
    line = f"CPU %: {stats.cpu_percent:.1f} | Core Temp: {temp}"
    if stats.draft_proposed:
        line += f" | Drafts: {stats.draft_accepted}/{stats.draft_proposed}"
    return line
