"""Shared pieces of the asyncio benchmarks (concurrency, multiturn, fairness): a daemon
in a private socket directory, one timed streaming request, percentiles, machine facts.

Not a benchmark itself. The scripts import it as `_common` (Python puts the script's own
directory, bench/, first on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_RE = re.compile(r"\bready:")
# "4 threads" or "2 lanes of 1 thread" (decode_tuning.Plan), as the load log line says.
THREADS_RE = re.compile(r"loaded .* as \S+, (\d+ threads?|\d+ lanes of \d+ threads?)\b")
STOP_TIMEOUT_S = 60.0  # the daemon's drain timeout (10s) plus actor and context shutdown


class BenchError(Exception):
    """Something failed: the message is for the user, one paragraph."""


class Log:
    def __init__(self, prog: str) -> None:
        self.prog = prog

    def __call__(self, msg: str) -> None:
        print(f"{self.prog}: {msg}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 15) -> str:
    kept = text.strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) if kept else "    (nothing)"


def bench_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("AXCHAT_SOCKET", None)
    return env


class Daemon:
    """One `axchat serve` on a socket in a private temporary directory (mode 0700)."""

    def __init__(self, model: str, serve_args: list[str], log: Log, label: str = "daemon") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="axchat-bench-"))
        self.socket = str(self.dir / "axchat.sock")
        self.log_path = self.dir / "serve.log"
        self.cmd = [sys.executable, "-m", "axchat", "serve", "--model", model, "--socket", self.socket, *serve_args]
        self.log = log
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self.exit_code: int | None = None
        self.final_log = ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return self.final_log

    def threads(self) -> str | None:
        m = THREADS_RE.search(self.log_text())
        return m.group(1) if m else None

    def start(self, timeout_s: float) -> None:
        self.log(f"starting {self.label}: {' '.join(self.cmd)}")
        with open(self.log_path, "wb") as out:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=bench_env())
        deadline = t0 + timeout_s
        while True:
            text = self.log_text()
            if READY_RE.search(text):
                self.ready_s = time.monotonic() - t0
                self.log(f"{self.label} ready after {self.ready_s:.1f}s")
                return
            code = self.proc.poll()
            if code is not None:
                raise BenchError(f"{self.label} exited with status {code} before it was ready. Its log ends:\n" + tail(text))
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label} not ready after {timeout_s:.0f}s (no 'ready:' line). Its log ends:\n" + tail(text))
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then wait for the exit; a daemon that will not go is killed and reported."""
        if self.proc is None or self.exit_code is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.exit_code = self.proc.returncode
            raise BenchError(f"{self.label} still running {STOP_TIMEOUT_S:.0f}s after SIGTERM; killed it. Its log ends:\n" + tail(self.log_text())) from None

    def finish(self) -> list[str]:
        """Stop (if not yet), remove the directory, check exit 0; returns the log's warning lines."""
        try:
            self.stop()
        finally:
            self.final_log = self.log_text()
            shutil.rmtree(self.dir, ignore_errors=True)
        if self.exit_code != 0:
            raise BenchError(f"{self.label} exited with status {self.exit_code} on SIGTERM (expected 0). Its log ends:\n" + tail(self.final_log))
        self.log(f"{self.label} stopped cleanly (exit 0)")
        return sorted({line.strip() for line in self.final_log.splitlines() if re.search(r"Warning|WARNING|ERROR|CRITICAL|Traceback", line)})


# ---------------------------------------------------------------- one timed request


@dataclass
class Stream:
    """Client-side timeline of one streamed generate (time.monotonic() seconds)."""

    sent: float = 0.0
    first: float | None = None  # first delta carrying token ids
    done_at: float | None = None
    deltas: list[tuple[float, int]] = field(default_factory=list)  # (arrival, token ids in it)
    text: str = ""
    done: Any = None  # v1.Done

    @property
    def completion_tokens(self) -> int:
        return self.done.usage.completion_tokens if self.done is not None else sum(n for _, n in self.deltas)

    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.sent) * 1e3

    def tok_s(self) -> float | None:
        """Completion tokens / (done - first delta), as the issue defines a client's rate."""
        if self.first is None or self.done_at is None or self.done_at <= self.first:
            return None
        return self.completion_tokens / (self.done_at - self.first)

    def gaps(self) -> list[tuple[float, float]]:
        """(end time, gap seconds) between consecutive deltas."""
        return [(b[0], b[0] - a[0]) for a, b in zip(self.deltas, self.deltas[1:], strict=False)]


async def stream(client: Any, request: Any, timeout_s: float, what: str, rec: Stream | None = None, on_delta: Any = None) -> Stream:
    """Send request on client (an AsyncClient) and record its events until done. Raises
    BenchError on an error event, a failed done, or timeout_s without completion."""
    from axchat.protocol import v1

    rec = rec or Stream()
    rec.sent = time.monotonic()
    handle = await client.generate(request)

    async def consume() -> None:
        async for ev in handle.events(stall_timeout_s=timeout_s):
            now = time.monotonic()
            if isinstance(ev, v1.Delta):
                if ev.token_ids:
                    if rec.first is None:
                        rec.first = now
                    rec.deltas.append((now, len(ev.token_ids)))
                rec.text += ev.text
                if on_delta is not None:
                    on_delta(rec)
            elif isinstance(ev, v1.Done):
                rec.done_at, rec.done = now, ev
                if ev.error is not None:
                    raise BenchError(f"{what}: done with error {ev.error.code}: {ev.error.message}")
            elif isinstance(ev, v1.Error):
                raise BenchError(f"{what}: error {ev.code}: {ev.message}")

    try:
        await asyncio.wait_for(consume(), timeout_s)
    except TimeoutError:
        await handle.cancel()
        raise BenchError(f"{what}: not done after {timeout_s:.0f}s") from None
    if rec.done is None:
        raise BenchError(f"{what}: the stream ended without a done event")
    return rec


def greedy(max_tokens: int) -> Any:
    from axchat.protocol import v1

    return v1.Sampling(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


# ---------------------------------------------------------------- numbers and facts


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rnd(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpus_busy(window_s: float = 1.0) -> float | None:
    """CPUs' worth of work other processes did over window_s just now (Linux /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(window_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    if total <= 0:
        return None
    return round((1 - (idle1 - idle0) / total) * (os.cpu_count() or 1), 2)


def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    proc = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                proc = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "processor": proc or platform.processor(), "nproc": usable}


def model_info(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {model_dir / 'config.json'}: {exc}") from None
    shape = None
    with contextlib.suppress(OSError, ValueError):
        shape = json.loads((model_dir / "axchat_tiny_model.json").read_text()).get("shape")
    return {
        "path": str(model_dir),
        "shape": shape,
        "hidden_size": config.get("hidden_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "vocab_size": config.get("vocab_size"),
        "context": config.get("max_position_embeddings"),
    }


def filler(n_words: int, salt: str = "") -> str:
    """Plain English-ish words the test tokenizer knows (about 1.7 tokens a word)."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "the", "river", "runs", "past", "an", "old", "mill", "and", "people", "talk", "about", "weather", "markets", "music", "gardens", "trains", "books", "and", "small", "boats", "on", "the", "lake"]
    out = [salt] if salt else []
    out += [words[i % len(words)] for i in range(n_words)]
    return " ".join(out)


def run_main(prog: str, bench: Any, args: Any) -> int:
    def _sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind through the finally blocks: the daemon gets stopped

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = bench(args)
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2))
    return 0
