"""`status` shows the daemon's memory by part, as the load planned it, and the parts
fit inside its RSS (the rest: interpreter, libraries, buffers)."""

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
    parts = (status.weights_bytes, status.running_kv_bytes, status.prefix_kv_bytes)
    assert [round(p / 2**20) for p in parts] == [int(g) for g in found.groups()]
    assert all(p > 0 for p in parts)
    assert sum(parts) < status.rss_bytes
