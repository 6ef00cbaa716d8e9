"""How many cores this process may use: its CPU affinity, capped by a cgroup v2 quota
(systemd's CPUQuota=, a container's --cpus). torch's own default counts the machine's."""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_cpu_limit(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """Whole CPUs the cgroup (v2) quota allows, rounded up; None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


def default_threads() -> int:
    """Usable cores, leaving one for the event loop and the actors when there are
    enough to spare (on fewer, a core given up costs the forward more than it saves)."""
    cores = usable_cores()
    return cores - 1 if cores >= 4 else cores
