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
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

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
        return "\n".join(lines) + "\n"


def _gauge(name: str, help_text: str, value: int) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
