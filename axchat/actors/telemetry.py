"""The daemon's figures: each finished request's stats and its log line, totals since
start, the recent token rate, and the process's CPU, memory and temperature. Plain
state owned by the reply stage, which puts these figures into `done` and `status_reply`."""

from __future__ import annotations

import collections
import logging
import os
import time

import psutil

from axchat.actors import messages as m
from axchat.actors.backends.base import BackendInfo
from axchat.actors.status import Totals
from axchat.protocol import v1
from axchat.stats_line import format_host, format_stats

log = logging.getLogger("axchat.requests")

RATE_WINDOW_S = 10.0


def read_temperature_c() -> float | None:
    """Hottest sensor psutil can read, or None where the platform exposes none."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except (OSError, RuntimeError):
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current]
    return max(readings) if readings else None


class Telemetry:
    def __init__(
        self,
        info: BackendInfo,
        *,
        max_queued: int = 0,
    ) -> None:
        # Each device's own reading (an AIPU's cores), as its actor last sent it, wins
        # over the host's sensors; keyed by the device actor's name.
        self._device_temperatures: dict[str, float | None] = {}
        threads = f", {info.threads} thread{'s' if info.threads != 1 else ''}" if info.threads else ""
        self._engine = f"{info.backend} {info.dtype}{threads}"
        self._max_queued = max_queued
        # (finish time, completion tokens) of recent requests, for the aggregate rate.
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._started = time.monotonic()
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # primes the counter status reports from
        self.requests_total = 0
        self.completion_tokens_total = 0
        self.draft_proposed_total = 0
        self.draft_accepted_total = 0

    def device_reading(self, msg: m.DeviceReading) -> None:
        self._device_temperatures[msg.device] = msg.temperature_c

    def rejected(self, msg: m.Rejected) -> None:
        self.requests_total += 1
        log.info("request %s rejected code=%s: %s", msg.label, msg.error.code, msg.error.message)

    def finished(self, msg: m.Finished) -> v1.Stats:
        """Counts a finished request, logs its line, and returns its figures for `done`."""
        now = time.monotonic_ns()
        t = msg.timings
        # Gen spans the whole device run (prefill start to last token), as the seed's
        # does, so Tokens/sec = Tokens / Gen reads the same way.
        generate_ms = (t.last_token_ns - t.prefill_start_ns) / 1e6 if t.last_token_ns else 0.0
        wall_ns = max(now - msg.received_ns, 1)
        stats = v1.Stats(
            tokenize_ms=msg.tokenize_ms,
            queue_ms=t.queue_ms,
            prefill_ms=t.prefill_ms,
            # From the frame's arrival to the first token leaving the sampler, as the
            # seed measures it; a token whose text is held back still counts.
            ttft_ms=(t.first_token_ns - msg.received_ns) / 1e6 if t.first_token_ns else 0.0,
            generate_ms=generate_ms,
            tokens_per_s=msg.completion_tokens / (generate_ms / 1e3) if generate_ms > 0 else 0.0,
            completion_tokens=msg.completion_tokens,
            # Process CPU time over the request's wall time; 100 = one core busy.
            cpu_percent=(time.process_time_ns() - msg.cpu_ns) / wall_ns * 100,
            device_temp_c=self._temperature_c(msg.device or "device"),
            device=msg.device,
            draft_proposed=t.draft_proposed,
            draft_accepted=t.draft_accepted,
        )
        self.requests_total += 1
        self.completion_tokens_total += msg.completion_tokens
        self.draft_proposed_total += t.draft_proposed
        self.draft_accepted_total += t.draft_accepted
        log.info(
            "request %s finish=%s prompt_tokens=%d cached_tokens=%d trimmed_messages=%d | %s | %s | Engine: %s",
            msg.label,
            msg.reason,
            msg.prompt_tokens,
            msg.cached_tokens,
            msg.trimmed_messages,
            format_stats(stats),
            format_host(stats),
            self._engine,
        )
        self._recent.append((time.monotonic(), msg.completion_tokens))
        return stats

    def totals(self) -> Totals:
        """Its section of `status`: uptime, totals, rate, process and temperatures."""
        return Totals(
            uptime_s=time.monotonic() - self._started,
            requests_total=self.requests_total,
            completion_tokens_total=self.completion_tokens_total,
            cpu_percent=self._process.cpu_percent(None),
            rss_bytes=self._process.memory_info().rss,
            device_temp_c=self._temperature_c(),
            pid=os.getpid(),
            tokens_per_s=self._recent_rate(),
            max_queued=self._max_queued,
            temperatures=dict(self._device_temperatures),
            draft_proposed_total=self.draft_proposed_total,
            draft_accepted_total=self.draft_accepted_total,
        )

    def _temperature_c(self, device: str | None = None) -> float | None:
        """That device's reading, or (None) the hottest of all; else the host's sensors."""
        if device is not None:
            reading = self._device_temperatures.get(device)
        else:
            readings = [t for t in self._device_temperatures.values() if t is not None]
            reading = max(readings) if readings else None
        return reading if reading is not None else read_temperature_c()

    def _recent_rate(self, window_s: float = RATE_WINDOW_S) -> float:
        """Completion tokens per second over the last `window_s`, all requests together."""
        cutoff = time.monotonic() - window_s
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / window_s
