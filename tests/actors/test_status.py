"""The status model (actors/status.py): each part's section, one assembly, and `hello`'s
answer from the same facts as `status`."""

from __future__ import annotations

import msgspec

from axchat.actors.backends.base import BackendInfo
from axchat.actors.status import DeviceSection, ModelFacts, Totals, status_reply, welcome
from axchat.protocol import v1


def fields(struct: type[msgspec.Struct]) -> set[str]:
    return set(struct.__struct_fields__)


def test_every_status_field_belongs_to_exactly_one_section() -> None:
    """A field added to `status_reply` must be given an owner, or this fails."""
    sections = [{"state"}, fields(ModelFacts), fields(DeviceSection), fields(Totals) - {"temperatures"}]
    owned = [name for section in sections for name in section]
    assert len(owned) == len(set(owned)), "a field with two owners"
    assert set(owned) == fields(v1.StatusReply)


def test_status_and_welcome_tell_the_same_model_facts() -> None:
    info = BackendInfo(
        backend="torch", model="m", device="cpu", dtype="bf16", context_length=2048, vocab_size=10, threads=2, lanes=3
    )
    facts = ModelFacts.of(info)
    totals = Totals(
        uptime_s=1.0, requests_total=2, completion_tokens_total=3, cpu_percent=4.0, rss_bytes=5,
        device_temp_c=None, pid=6, tokens_per_s=7.0, max_queued=8,
    )  # fmt: skip
    reply = status_reply(v1.DaemonState.DRAINING, facts, DeviceSection(running=1, queued=2), totals)
    hello = welcome(facts, protocol="1.0", server_version="x", max_frame_bytes=9, client_timeout_s=0.0)
    assert reply.state is v1.DaemonState.DRAINING and reply.threads == 6  # every lane's threads
    assert (reply.running, reply.queued, reply.pid, reply.max_queued) == (1, 2, 6, 8)
    for name in ("model", "backend", "device", "dtype", "context_length"):
        assert getattr(reply, name) == getattr(hello, name) == getattr(info, name)
