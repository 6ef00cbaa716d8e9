"""Metis temperature from `triton_trace`'s system log, read as the Voyager SDK's core
temperature tracer reads it: raise the log level to `inf:collector` (else the firmware's
collector never logs `core_temps`), stream `triton_trace --clear-buffer --slog` line by
line, and put the level back to `err` on close. A background thread keeps the hottest
sensor's last reading, so telemetry reads a float and never blocks the loop.

A collector line looks like `[04:58:54.012,603] <inf> collector: core_temps=[35,34,34,35,34]`:
the board sensor, then cores 0 to 3. The SDK reports the highest of the five; so do we."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

TOOL = "triton_trace"
RESTART_INTERVAL_S = 1.0  # when the stream ends (a tool that prints once), run it again after this
SETTING_TIMEOUT_S = 10.0  # a log-level change is one quick ioctl; a hung one must not hold start-up
_CORE_TEMPS = re.compile(r"core_temps=\[([^\]]*)\]")


def hottest_core_c(line: str) -> float | None:
    """The highest value in a line's `core_temps=[…]`, or None if it has none."""
    match = _CORE_TEMPS.search(line)
    if match is None:
        return None
    values = []
    for part in match.group(1).split(","):
        try:
            values.append(float(part.strip().removesuffix("C").strip()))
        except ValueError:
            continue
    return max(values) if values else None


def stream_command() -> list[str]:
    """The seed's: line-buffered through `stdbuf` where it exists, so lines arrive as logged."""
    command = [TOOL, "--clear-buffer", "--slog"]
    return ["stdbuf", "-oL", *command] if shutil.which("stdbuf") else command


class CoreTemperatureProbe:
    def __init__(self) -> None:
        self._latest: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._updated = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start_if_available(cls) -> CoreTemperatureProbe | None:
        if shutil.which(TOOL) is None:
            return None
        probe = cls()
        probe.start()
        return probe

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="axchat-aipu-temperature", daemon=True)
        self._thread.start()

    def reading_c(self) -> float | None:
        return self._latest

    def wait_reading(self, timeout_s: float, accept: Callable[[float], bool] = lambda _c: True) -> float | None:
        """Block until a reading that `accept`s arrives (None when `timeout_s` passes first)."""
        with self._updated:
            self._updated.wait_for(lambda: self._latest is not None and accept(self._latest), timeout_s)
            return self._latest if self._latest is not None and accept(self._latest) else None

    def _set_level(self, level: str) -> bool:
        try:
            done = subprocess.run(
                [TOOL, "--slog-level", level],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=SETTING_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("`%s --slog-level %s` failed (%s); AIPU temperature may not read", TOOL, level, exc)
            return False
        if done.returncode != 0:
            log.warning("`%s --slog-level %s` exited %d: %s", TOOL, level, done.returncode, done.stderr.strip())
        return done.returncode == 0

    def _run(self) -> None:
        # From a known level, as the SDK does, then the collector's info lines on.
        self._set_level("err")
        self._set_level("inf:collector")
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    break
                try:
                    self._proc = subprocess.Popen(
                        stream_command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                    )
                except OSError as exc:
                    log.warning("cannot run %s (%s); AIPU temperature unavailable", TOOL, exc)
                    return
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                reading = hottest_core_c(line)
                if reading is not None:
                    with self._updated:
                        self._latest = reading
                        self._updated.notify_all()
            self._proc.wait()
            self._stop.wait(RESTART_INTERVAL_S)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive() and self._proc is not None:
                self._proc.kill()
                self._thread.join(timeout=2)
        # Leave the card's log as the SDK leaves it: the collector's lines fill its ring.
        self._set_level("err")
