"""The bridge's Prometheus metrics, written in the text exposition format by hand: a
few counters and two histograms do not justify a dependency and its global registry
(one registry per app keeps tests and several bridges in one process apart)."""

from __future__ import annotations

import bisect
from collections import defaultdict

from axchat.protocol import v1

TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.observe_many(value, 1)

    def observe_many(self, value: float, times: int) -> None:
        """`value` observed `times` times (a delta's tokens share its gap)."""
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.sum += value * times
        self.count += times

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{self.name}_bucket{{le="{le}"}} {running}')
        lines += [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]
        return lines


class BridgeMetrics:
    def __init__(self) -> None:
        # (endpoint, outcome) -> count; outcome is a finish reason or an error code.
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.ttft = Histogram(
            "axchat_web_time_to_first_token_seconds",
            "From the bridge receiving a completion request to its first text.",
            TTFT_BUCKETS_S,
        )
        self.itl = Histogram(
            "axchat_web_inter_token_latency_seconds",
            "Time between tokens of a streamed reply, as the bridge receives them.",
            ITL_BUCKETS_S,
        )
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0

    def count_request(self, endpoint: str, outcome: str) -> None:
        self.requests[(endpoint, outcome)] += 1

    def count_usage(self, usage: v1.Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens

    def render(self, status: v1.StatusReply | None) -> str:
        """The exposition text; `status` is the daemon's, None when it did not answer."""
        lines = [
            "# HELP axchat_web_requests_total Completion requests by endpoint and outcome.",
            "# TYPE axchat_web_requests_total counter",
        ]
        for (endpoint, outcome), n in sorted(self.requests.items()):
            lines.append(f'axchat_web_requests_total{{endpoint="{endpoint}",outcome="{outcome}"}} {n}')
        lines += self.ttft.render() + self.itl.render()
        for name, help_text, value in (
            ("axchat_web_prompt_tokens_total", "Prompt tokens of finished requests.", self.prompt_tokens),
            ("axchat_web_completion_tokens_total", "Completion tokens of finished requests.", self.completion_tokens),
            (
                "axchat_web_prefix_cache_hit_tokens_total",
                "Prompt tokens served from the daemon's prefix cache.",
                self.cached_tokens,
            ),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        lines += _gauge(
            "axchat_daemon_up", "1 when the daemon answered this scrape's status request.", int(status is not None)
        )
        if status is not None:
            lines += _gauge("axchat_daemon_running_requests", "Requests the daemon is generating.", status.running)
            lines += _gauge("axchat_daemon_queued_requests", "Requests waiting for a device slot.", status.queued)
            lines += _gauge(
                "axchat_daemon_model_loaded", "1 while the model is loaded (keep-alive unloads it when idle).", int(status.loaded)
            )
            lines += _memory_gauges(status)
            for name, help_text, value in (
                ("axchat_daemon_draft_proposed_tokens_total", "Proposed tokens verified (speculative decoding).", status.draft_proposed_total),
                ("axchat_daemon_draft_accepted_tokens_total", "Of those, kept.", status.draft_accepted_total),
            ):
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
            lines += _device_gauges(status.devices)
        return "\n".join(lines) + "\n"


# (metric, help, DeviceStatus field or a function of it), one sample per device.
_DEVICE_GAUGES = (
    ("axchat_device_up", "1 while the device is in placement, 0 once it was taken out.", lambda d: int(d.state != "down")),
    ("axchat_device_loaded", "1 while the device has the model loaded.", lambda d: int(d.state == "serving")),
    ("axchat_device_running_requests", "Requests the device is generating.", lambda d: d.running),
    ("axchat_device_queued_requests", "Requests waiting on the device itself.", lambda d: d.queued),
    ("axchat_device_load_ratio", "Running requests over the device's slots.", lambda d: d.running / d.max_running if d.max_running else 0.0),
    ("axchat_device_tokens_per_second", "Completion tokens per second over the last 10 s.", lambda d: d.tokens_per_s),
    ("axchat_device_requests_placed_total", "Requests placed on the device since start.", lambda d: d.requests_total),
    ("axchat_device_affinity_hits_total", "Of those, placed beside their conversation's cached prefix.", lambda d: d.affinity_hits),
)


def _device_gauges(devices: list[v1.DeviceStatus]) -> list[str]:
    """Per-device samples, labelled by device, where the daemon drives several."""
    if not devices:
        return []
    lines = []
    for name, help_text, value in _DEVICE_GAUGES:
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{device="{d.name}",label="{_label(d.label)}"}} {value(d)}' for d in devices]
    readings = [d for d in devices if d.temperature_c is not None]
    if readings:
        name = "axchat_device_temperature_celsius"
        lines += [f"# HELP {name} The device's own temperature reading.", f"# TYPE {name} gauge"]
        lines += [f'{name}{{device="{d.name}",label="{_label(d.label)}"}} {d.temperature_c}' for d in readings]
    return lines


def _memory_gauges(status: v1.StatusReply) -> list[str]:
    """The daemon's memory by part, one labelled gauge (the parts sum to its RSS)."""
    name = "axchat_daemon_memory_bytes"
    lines = [f"# HELP {name} The daemon's resident memory by part (weights, running KV, kept-prefix KV, the rest).", f"# TYPE {name} gauge"]
    parts = {
        "weights": status.weights_bytes,
        "running_kv": status.running_kv_bytes,
        "prefix_kv": status.prefix_kv_bytes,
        "other": max(0, status.rss_bytes - status.weights_bytes - status.running_kv_bytes - status.prefix_kv_bytes),
    }
    lines += [f'{name}{{part="{part}"}} {value}' for part, value in parts.items()]
    return lines


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _gauge(name: str, help_text: str, value: int) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
