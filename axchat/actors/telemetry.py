"""Telemetry actor: the last stop before the front door. It turns each finished
request into the seed's figures and one log line, and assembles status replies."""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable

import psutil

from axchat.actors import messages as m
from axchat.actors.backends.base import BackendInfo
from axchat.actors.mailbox import Actor, Bus, Supervisor
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


class TelemetryActor(Actor):
    name = "telemetry"

    def __init__(
        self,
        bus: Bus,
        supervisor: Supervisor,
        info: BackendInfo,
        *,
        max_queued: int = 0,
        temperature: Callable[[], float | None] | None = None,
    ) -> None:
        super().__init__(bus, supervisor)
        # The backend's own reading (an AIPU's cores) wins over the host's sensors.
        self._device_temperature = temperature
        self._info = info
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

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.TextOut):
            await self._out(msg.rid, v1.Delta(text=msg.text, token_ids=msg.token_ids), final=False)
        elif isinstance(msg, m.QueuePosition):
            await self._out(msg.rid, v1.Queued(position=msg.position), final=False)
        elif isinstance(msg, m.Loading):
            body = v1.Loading(
                model=self._info.model, stage=msg.stage, elapsed_s=msg.elapsed_s, last_load_s=msg.last_load_s
            )
            await self._out(msg.rid, body, final=False)
        elif isinstance(msg, m.Finished):
            await self._finished(msg)
        elif isinstance(msg, m.Rejected):
            self.requests_total += 1
            log.info("request %s rejected code=%s: %s", msg.label, msg.error.code, msg.error.message)
            await self._out(msg.rid, v1.Error(code=msg.error.code, message=msg.error.message), final=True)
        elif isinstance(msg, m.DeviceReport):
            await self._out(msg.rid, self._status(msg), final=True)
        else:
            raise TypeError(f"telemetry got unexpected {type(msg).__name__}")

    async def _out(self, rid: int, body: v1.DaemonMessage, *, final: bool) -> None:
        await self.send("frontdoor", m.Outbound(rid=rid, body=v1.encode_body(body), final=final))

    async def _finished(self, msg: m.Finished) -> None:
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
            device_temp_c=self._temperature_c(),
            device=msg.device,
        )
        usage = v1.Usage(
            prompt_tokens=msg.prompt_tokens,
            completion_tokens=msg.completion_tokens,
            cached_tokens=msg.cached_tokens,
        )
        self.requests_total += 1
        self.completion_tokens_total += msg.completion_tokens
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
        done = v1.Done(
            finish_reason=msg.reason, usage=usage, stats=stats, error=msg.error, trimmed_messages=msg.trimmed_messages
        )
        await self._out(msg.rid, done, final=True)

    def _status(self, report: m.DeviceReport) -> v1.StatusReply:
        info = self._info
        return v1.StatusReply(
            state="draining" if report.state == "draining" else "serving",
            model=info.model,
            backend=info.backend,
            device=info.device,
            dtype=info.dtype,
            context_length=info.context_length,
            uptime_s=time.monotonic() - self._started,
            running=report.running,
            queued=report.queued,
            kv_sequences=report.kv_sequences,
            requests_total=self.requests_total,
            completion_tokens_total=self.completion_tokens_total,
            cpu_percent=self._process.cpu_percent(None),
            rss_bytes=self._process.memory_info().rss,
            device_temp_c=self._temperature_c(),
            pid=os.getpid(),
            requests=report.requests,
            tokens_per_s=self._recent_rate(),
            max_running=report.max_running,
            max_queued=self._max_queued,
            prefix_cache_entries=report.prefix_cache_entries,
            prefix_cache_bytes=report.prefix_cache_bytes,
            loaded=report.loaded,
            unloads_at=report.unloads_at,
            load_stage=report.load_stage,
            decode_path=info.decode_path,
            threads=info.threads * info.lanes,
            dtype_reason=info.dtype_reason,
            compiled=info.compiled,
            compile_s=info.compile_s,
            step_ms=report.step_ms,
            overhead_ms_per_token=report.overhead_ms_per_token,
            devices=report.devices,
        )

    def _temperature_c(self) -> float | None:
        reading = self._device_temperature() if self._device_temperature is not None else None
        return reading if reading is not None else read_temperature_c()

    def _recent_rate(self, window_s: float = RATE_WINDOW_S) -> float:
        """Completion tokens per second over the last `window_s`, all requests together."""
        cutoff = time.monotonic() - window_s
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / window_s
