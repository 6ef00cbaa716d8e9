"""`status` shows the daemon's memory by part: weights and running KV as the load planned
them, kept conversations as they hold now (host memory, within the planned budget), and
the parts fit inside its RSS (the rest: interpreter, libraries, buffers)."""

from __future__ import annotations

import re

from conftest import DaemonProcess, RawClient

from axchat.protocol import v1

PLAN_RE = re.compile(r"memory plan: weights (\d+) MiB, running KV (\d+) MiB, kept-prefix KV (\d+) MiB")


def test_status_shows_the_planned_parts(daemon: DaemonProcess, raw: RawClient) -> None:
    status = raw.request(v1.Status())
    assert isinstance(status, v1.StatusReply)
    found = PLAN_RE.search(daemon.log_text())
    assert found is not None, daemon.log_text()
    planned = (status.weights_bytes, status.running_kv_bytes)
    assert [round(p / 2**20) for p in planned] == [int(g) for g in found.groups()[:2]]
    assert all(p > 0 for p in planned) and int(found.group(3)) > 0
    assert status.prefix_kv_bytes == status.prefix_cache_bytes  # nothing kept yet, or what is
    assert sum(planned) + status.prefix_kv_bytes < status.rss_bytes
