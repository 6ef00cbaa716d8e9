"""The placer's parts that need no daemon: prefix fingerprints and the affinity table
(salted by client, forgotten with a connection or a device), the fair line's out-of-order
take, and how per-device status reads in `axchat status` and `/metrics`. The placer in a
daemon is tested over emulated cards (tests/daemon/test_emulated_cards.py)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from axchat.actors.device.fair_queue import FairQueue
from axchat.actors.prefix_affinity import BLOCK_TOKENS, PrefixAffinity, block_fingerprints
from axchat.frontends.status import _device_lines
from axchat.frontends.web.metrics import BridgeMetrics
from axchat.protocol import v1


def test_fingerprints_cover_whole_blocks_and_chain_the_prefix() -> None:
    first = list(range(40))
    assert len(block_fingerprints(first)) == 40 // BLOCK_TOKENS
    assert block_fingerprints(first[:BLOCK_TOKENS - 1]) == []
    # The next turn starts with this one: its leading fingerprints are the same.
    later = [*first, *[7] * 30]
    assert block_fingerprints(later)[:2] == block_fingerprints(first)
    # A change in the first block changes every fingerprint after it.
    changed = [99, *first[1:]]
    assert not set(block_fingerprints(changed)) & set(block_fingerprints(first))


def test_affinity_finds_the_longest_prefix_for_that_client_only() -> None:
    table = PrefixAffinity()
    turn1 = list(range(20))
    turn2 = [*turn1, *range(100, 140)]
    table.record("c1", block_fingerprints(turn2), "device-1")
    table.record("c1", block_fingerprints(turn1), "device-0")  # a shorter prefix served elsewhere since
    assert table.find("c1", block_fingerprints([*turn2, *[1] * 20])) == "device-1"  # the longest match wins
    assert table.find("c1", block_fingerprints([*turn1, *[5] * 16])) == "device-0"
    assert table.find("c2", block_fingerprints(turn2)) is None  # another client's prefix is not theirs
    table.forget_device("device-1")
    assert table.find("c1", block_fingerprints(turn2)) == "device-0"
    table.record("c1/alice", block_fingerprints(turn1), "device-0")
    table.forget_connection("c1")  # every user behind the connection goes with it
    assert table.find("c1", block_fingerprints(turn2)) is None
    assert table.find("c1/alice", block_fingerprints(turn1)) is None
    assert len(table) == 0


def test_affinity_table_is_bounded() -> None:
    table = PrefixAffinity(max_entries=10)
    for i in range(20):
        table.record(f"c{i}", block_fingerprints(list(range(i, i + BLOCK_TOKENS))), "device-0")
    assert len(table) == 10
    assert table.find("c19", block_fingerprints(list(range(19, 19 + BLOCK_TOKENS)))) == "device-0"
    assert table.find("c0", block_fingerprints(list(range(BLOCK_TOKENS)))) is None


@dataclass
class Item:
    rid: int
    client: str


def test_taking_out_of_order_sends_that_client_to_the_back() -> None:
    line: FairQueue[Item] = FairQueue()
    for rid, client in ((1, "a"), (2, "a"), (3, "b"), (4, "c"), (5, "b")):
        line.push(Item(rid, client))
    assert [i.rid for i in line.in_order()] == [1, 3, 4, 2, 5]
    assert line.take(3) is not None  # b served out of order (a waits for another device)
    assert [i.rid for i in line.in_order()] == [1, 4, 5, 2]  # a, c, then b again
    assert line.take(1) is not None
    assert [i.rid for i in line.in_order()] == [4, 5, 2]


DEVICES = [
    v1.DeviceStatus(
        name="device-0", label="a (emulated)", state="serving", running=1, max_running=1,
        tokens_per_s=9.5, temperature_c=41.0, requests_total=7, affinity_hits=5,
    ),
    v1.DeviceStatus(name="device-1", label="b", state="down", reason="b: 4 sub-devices asked, 0 free"),
]  # fmt: skip


def test_status_and_metrics_show_each_device() -> None:
    lines = _device_lines([_plain(d) for d in DEVICES])
    assert lines[0] == "devices:"
    assert "device-0" in lines[1] and "1/1 running" in lines[1] and "9.5 tokens/s" in lines[1] and "41.0°C" in lines[1]
    assert "down: b: 4 sub-devices asked, 0 free" in lines[2]
    status = v1.StatusReply(
        state="serving", model="m", backend="aipu", device="2 devices", dtype="int8", context_length=1024,
        uptime_s=1.0, running=1, queued=0, kv_sequences=1, requests_total=7, completion_tokens_total=70,
        cpu_percent=1.0, rss_bytes=1, devices=DEVICES,
    )  # fmt: skip
    text = BridgeMetrics().render(status)
    assert 'axchat_device_up{device="device-0",label="a (emulated)"} 1' in text
    assert 'axchat_device_up{device="device-1",label="b"} 0' in text
    assert 'axchat_device_tokens_per_second{device="device-0",label="a (emulated)"} 9.5' in text
    assert 'axchat_device_temperature_celsius{device="device-0",label="a (emulated)"} 41.0' in text
    assert 'axchat_device_affinity_hits_total{device="device-0",label="a (emulated)"} 5' in text


def _plain(d: v1.DeviceStatus) -> dict[str, object]:
    return msgspec.to_builtins(d)  # type: ignore[no-any-return]


def test_each_device_reports_its_own_temperature() -> None:
    """Devices send DeviceReading (not the placer): the reply stage's figures put each
    device's reading on its status line and in the stats of what it served."""
    from axchat.actors import messages as m
    from axchat.actors.backends.base import BackendInfo
    from axchat.actors.status import DeviceSection, ModelFacts, status_reply
    from axchat.actors.telemetry import Telemetry

    info = BackendInfo(backend="aipu", model="m", device="2 devices", dtype="int8", context_length=64, vocab_size=10)
    telemetry = Telemetry(info)
    telemetry.device_reading(m.DeviceReading(device="device-0", temperature_c=41.0))
    telemetry.device_reading(m.DeviceReading(device="device-1", temperature_c=55.5))
    filled = status_reply(v1.DaemonState.SERVING, ModelFacts(), DeviceSection(devices=DEVICES), telemetry.totals())
    assert [d.temperature_c for d in filled.devices] == [41.0, None]  # device-1 is down: no reading shown
    assert filled.device_temp_c == 55.5  # the hottest device
    finished = m.Finished(
        rid=1, label="r1", reason="stop", prompt_tokens=1, completion_tokens=1, cached_tokens=0, trimmed_messages=0,
        received_ns=0, tokenize_ms=0.0, cpu_ns=0, timings=m.DeviceTimings(), device="device-1",
    )  # fmt: skip
    stats = telemetry.finished(finished)
    assert stats.device == "device-1" and stats.device_temp_c == 55.5
