"""One `axchat serve` under test, in a private socket directory, started and stopped
with deadlines; its log is read for the ready line, the thread plan and warnings."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness.output import BenchError, Log, tail

READY_RE = re.compile(r"\bready:")
# "4 threads" or "2 lanes of 1 thread" (decode_tuning.Plan), as the load log line says.
THREADS_RE = re.compile(r"loaded .* as \S+, (\d+ threads?|\d+ lanes of \d+ threads?)\b")
STOP_TIMEOUT_S = 60.0  # the daemon's drain timeout (10s) plus actor and context shutdown


def bench_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("AXCHAT_SOCKET", None)
    return env


class Daemon:
    """One `axchat serve` on a socket in a private temporary directory (mode 0700)."""

    def __init__(
        self,
        model: str,
        serve_args: list[str],
        log: Log,
        label: str = "daemon",
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        """`python`: the interpreter whose axchat runs (another venv's, say)."""
        self.dir = Path(tempfile.mkdtemp(prefix="axchat-bench-"))
        self.socket = str(self.dir / "axchat.sock")
        self.log_path = self.dir / "serve.log"
        self.cmd = [python, "-m", "axchat", "serve", "--model", model, "--socket", self.socket, *serve_args]
        self.log = log
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self.exit_code: int | None = None
        self.final_log = ""
        self.env = env or {}
        self.warnings: list[str] = []  # the log's warning lines, once `serving` is over

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
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**bench_env(), **self.env},
            )
        deadline = t0 + timeout_s
        while True:
            text = self.log_text()
            if READY_RE.search(text):
                self.ready_s = time.monotonic() - t0
                self.log(f"{self.label} ready after {self.ready_s:.1f}s")
                return
            code = self.proc.poll()
            if code is not None:
                raise BenchError(
                    f"{self.label} exited with status {code} before it was ready. Its log ends:\n" + tail(text)
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.label} not ready after {timeout_s:.0f}s (no 'ready:' line). Its log ends:\n" + tail(text)
                )
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
            raise BenchError(
                f"{self.label} still running {STOP_TIMEOUT_S:.0f}s after SIGTERM; killed it. Its log ends:\n"
                + tail(self.log_text())
            ) from None

    def finish(self) -> list[str]:
        """Stop (if not yet), remove the directory, check exit 0; returns the log's warning lines."""
        try:
            self.stop()
        finally:
            self.final_log = self.log_text()
            shutil.rmtree(self.dir, ignore_errors=True)
        if self.exit_code != 0:
            raise BenchError(
                f"{self.label} exited with status {self.exit_code} on SIGTERM (expected 0). Its log ends:\n"
                + tail(self.final_log)
            )
        self.log(f"{self.label} stopped cleanly (exit 0)")
        return sorted(
            {
                line.strip()
                for line in self.final_log.splitlines()
                if re.search(r"Warning|WARNING|ERROR|CRITICAL|Traceback", line)
            }
        )


@contextlib.contextmanager
def serving(daemon: Daemon, ready_timeout_s: float) -> Iterator[Daemon]:
    """`daemon` started for the block and finished after it, whatever happens there;
    its warning lines are in `daemon.warnings` afterwards."""
    try:
        daemon.start(ready_timeout_s)
        yield daemon
    finally:
        daemon.warnings = daemon.finish()
