"""Metis core temperature from `triton_trace --slog`: a background thread keeps the
hottest core's last reading, so telemetry reads a float and never blocks the loop."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
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


class CoreTemperatureProbe:
    """Runs `triton_trace --slog` and remembers the hottest core. Where it streams, each
    line updates the reading; where it prints once and exits, it is run again about
    once a second."""

    def __init__(self, command: tuple[str, ...] = ("triton_trace", "--slog")) -> None:
        self._command = command
        self._latest: float | None = None
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start_if_available(cls) -> CoreTemperatureProbe | None:
        if shutil.which("triton_trace") is None:
            return None
        probe = cls()
        probe.start()
        return probe

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="axchat-aipu-temperature", daemon=True)
        self._thread.start()

    def reading_c(self) -> float | None:
        return self._latest

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._proc = subprocess.Popen(
                    self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                )
            except OSError as exc:
                log.warning("cannot run %s (%s); AIPU temperature unavailable", self._command[0], exc)
                return
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                reading = hottest_core_c(line)
                if reading is not None:
                    self._latest = reading
                if self._stop.is_set():
                    break
            self._proc.wait()
            self._stop.wait(POLL_INTERVAL_S)

    def close(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=2)
