"""Facts about where a figure was measured: the machine, its load, the model's shape."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from harness.output import BenchError


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


def model_config(model_dir: Path) -> dict[str, Any]:
    """The model's config.json; a BenchError when it cannot be read."""
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {model_dir / 'config.json'}: {exc}") from None


def model_info(model_dir: Path) -> dict[str, Any]:
    config = model_config(model_dir)
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


# Other processes' load above this many CPUs makes absolute figures noisy.
BUSY_CPUS_NOTED = 0.25


class LoadAtStart:
    """How busy the machine was as a bench began, for its `machine` facts and notes."""

    def __init__(self) -> None:
        self.busy = cpus_busy()
        self.loadavg = loadavg()

    def notes(self) -> list[str]:
        if self.busy is not None and self.busy > BUSY_CPUS_NOTED:
            return [f"other processes kept {self.busy} CPUs busy just before the bench: absolute figures are noisy"]
        return []

    def machine(self) -> dict[str, Any]:
        """`machine()` with the load before the bench and at its end (now)."""
        return {**machine(), "cpus_busy_before": self.busy, "loadavg_start": self.loadavg, "loadavg_end": loadavg()}
