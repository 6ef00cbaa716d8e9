"""Keep-alive with a real daemon on the tiny model: it unloads the idle model and frees
it, keeps answering status, and the next generate loads it again, telling every waiting
client how the load goes, then answers as before.

One daemon for the module, with its own copy of the model (a test removes a file from
it) and a gate file that lets a test hold a reload at its weights stage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, RawClient, chat, short_socket_dir
from test_notify import NotifyListener
from testdaemon import LOAD_GATE_ENV

from axchat.daemon.model_load import STAGES
from axchat.protocol import v1

KEEP_ALIVE = "1s"
STATE_TIMEOUT_S = 60.0
STATUS_FAST_S = 1.0


class KeepAliveDaemon:
    def __init__(self, model_dir: Path, gate: Path, notify: str) -> None:
        self.model_dir = model_dir
        self.gate = gate
        self.notify = NotifyListener(notify)  # as systemd's NOTIFY_SOCKET
        env = {LOAD_GATE_ENV: str(gate), "NOTIFY_SOCKET": notify}
        self.process = DaemonProcess(model_dir, "--keep-alive", KEEP_ALIVE, env=env)

    @property
    def socket(self) -> str:
        return self.process.socket


@pytest.fixture(scope="module")
def kad(tiny_model_dir: Path) -> Iterator[KeepAliveDaemon]:
    work = short_socket_dir()
    model = Path(shutil.copytree(tiny_model_dir, work / "model"))
    gate = work / "gate"
    gate.touch()  # open: the start-up load goes straight through
    d = KeepAliveDaemon(model, gate, str(work / "notify"))
    d.process.wait_ready()
    yield d
    gate.touch()
    assert d.process.stop() == 0, d.process.log_text()
    d.notify.close()


@pytest.fixture
def client(kad: KeepAliveDaemon) -> Iterator[RawClient]:
    c = RawClient(kad.socket)
    yield c
    c.close()


def status(client: RawClient) -> v1.StatusReply:
    reply = client.request(v1.Status())
    assert isinstance(reply, v1.StatusReply)
    return reply


def wait_status(client: RawClient, want: str, timeout_s: float = STATE_TIMEOUT_S) -> v1.StatusReply:
    """Poll status until it shows `want`: "unloaded", "loading" or "held" (at the gate)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = status(client)
        if want == "unloaded" and not reply.loaded and reply.load_stage is None:
            return reply
        if want == "loading" and reply.load_stage is not None:
            return reply
        if want == "held" and reply.load_stage == "weights":
            return reply
        assert time.monotonic() < deadline, f"status never showed {want}: {reply}"
        time.sleep(0.05)  # a polling period, bounded by the deadline above


def answer(frames: list[v1.DaemonMessage]) -> str:
    done = frames[-1]
    assert isinstance(done, v1.Done), frames
    assert done.finish_reason == "length", done
    return "".join(f.text for f in frames if isinstance(f, v1.Delta))


def loading_frames(frames: list[v1.DaemonMessage]) -> list[v1.Loading]:
    return [f for f in frames if isinstance(f, v1.Loading)]


def test_idle_model_is_unloaded_and_status_says_when(kad: KeepAliveDaemon, client: RawClient) -> None:
    rid = "warm"
    client.send(rid, chat("Hello", max_tokens=4))
    answer(list(client.stream(rid)))
    loaded = status(client)
    if loaded.loaded:  # it may already have unloaded on a slow machine
        assert loaded.unloads_at is not None and loaded.unloads_at <= time.time() + 1.5
    unloaded = wait_status(client, "unloaded")
    assert unloaded.unloads_at is None and unloaded.kv_sequences == 0 and unloaded.prefix_cache_entries == 0
    kad.process.wait_for_line("model unloaded and its memory freed", timeout_s=10)
    _, said = kad.notify.until("STATUS", timeout_s=10)
    while "unloaded" not in said["STATUS"]:  # systemd hears it too, within a tick
        _, said = kad.notify.until("STATUS", timeout_s=10)
    # (Our own status polls may count among the requests.)
    assert said["STATUS"].startswith("serving ") and said["STATUS"].endswith(" request(s), model unloaded (idle)")
    shown = subprocess.run(
        [sys.executable, "-m", "axchat", "status", "--socket", kad.socket], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "memory:   model unloaded after idling" in shown.stdout, shown
    # Unloaded, the daemon answers at once.
    started = time.monotonic()
    for _ in range(5):
        assert not status(client).loaded
    assert (time.monotonic() - started) / 5 < STATUS_FAST_S


def test_next_generate_reloads_with_progress_and_answers_the_same(kad: KeepAliveDaemon, client: RawClient) -> None:
    request = chat("Tell me about keep-alive", max_tokens=12)
    client.send("before", request)
    reference = answer(list(client.stream("before")))
    wait_status(client, "unloaded")

    client.send("after", request)
    frames = list(client.stream("after"))
    assert answer(frames) == reference
    loading = loading_frames(frames)
    assert loading, f"no loading event before the answer: {frames}"
    assert all(f.model == "model" for f in loading)
    order = [STAGES.index(f.stage) for f in loading]
    assert order == sorted(order), f"stages went backwards: {[f.stage for f in loading]}"
    first_delta = next(i for i, f in enumerate(frames) if isinstance(f, v1.Delta))
    assert all(isinstance(f, v1.Loading) for f in frames[: len(loading)]) and len(loading) <= first_delta


def test_ask_shows_loading_then_the_same_answer(kad: KeepAliveDaemon, client: RawClient) -> None:
    def ask() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "axchat", "ask", "--socket", kad.socket, "--json", "--max-tokens", "6", "Hi"],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    def text(evs: list[dict[str, object]]) -> str:
        return "".join(str(e["text"]) for e in evs if e["type"] == "delta")

    wait_status(client, "unloaded")
    reloaded = events(ask())
    assert reloaded[0]["type"] == "loading" and reloaded[0]["stage"] in STAGES, reloaded[0]
    assert reloaded[-1]["type"] == "done"
    warm = events(ask())  # straight after: still loaded
    assert not any(e["type"] == "loading" for e in warm)
    assert text(reloaded) == text(warm)


def test_clients_queue_behind_a_reload_and_may_cancel_or_leave(kad: KeepAliveDaemon, client: RawClient) -> None:
    request = chat("Two of us", max_tokens=8)
    client.send("ref", request)
    reference = answer(list(client.stream("ref")))
    wait_status(client, "unloaded")
    kad.gate.unlink()  # hold the next load at its weights stage
    others = [RawClient(kad.socket) for _ in range(4)]
    try:
        a, b, quitter, leaver = others
        a.send("a", request)
        b.send("b", request)
        quitter.send("q", request)
        leaver.send("l", request)
        for c, rid in ((a, "a"), (b, "b"), (quitter, "q"), (leaver, "l")):
            first = c.recv(want=rid)[1]
            assert isinstance(first, v1.Loading), first
        held = wait_status(client, "held")  # at the gate: whatever stages came before took their time
        assert held.load_stage == "weights" and held.queued == 4 and not held.loaded
        started = time.monotonic()
        assert status(client).load_stage == "weights"
        assert time.monotonic() - started < STATUS_FAST_S  # the loop is free while it loads

        quitter.send("q", v1.Cancel())
        rest = [f for f in quitter.stream("q") if not isinstance(f, v1.Loading)]
        assert len(rest) == 1 and isinstance(rest[0], v1.Done) and rest[0].finish_reason == "cancelled", rest
        leaver.close()  # gone without a word: the daemon notices and drops its request
        others.remove(leaver)
        deadline = time.monotonic() + STATE_TIMEOUT_S
        while (now := status(client)).queued != 2:
            assert time.monotonic() < deadline, f"the vanished client's request still waits: {now}"
            time.sleep(0.05)  # a polling period, bounded by the deadline
        # Both still wait, and hear about it at least once a second or so.
        assert isinstance(a.recv(want="a", timeout_s=10)[1], v1.Loading)
        assert isinstance(b.recv(want="b", timeout_s=10)[1], v1.Loading)

        kad.gate.touch()
        assert answer(list(a.stream("a"))) == reference
        assert answer(list(b.stream("b"))) == reference
    finally:
        kad.gate.touch()
        for c in others:
            c.close()


def test_a_failed_reload_fails_the_waiting_requests_and_the_daemon_serves_on(
    kad: KeepAliveDaemon, client: RawClient
) -> None:
    request = chat("Still there?", max_tokens=5)
    client.send("ref", request)
    reference = answer(list(client.stream("ref")))
    wait_status(client, "unloaded")
    config = kad.model_dir / "config.json"
    hidden = config.rename(kad.model_dir / "config.json.away")
    try:
        client.send("x", request)
        client.send("y", request)
        for rid in ("x", "y"):
            done = list(client.stream(rid))[-1]
            assert isinstance(done, v1.Done) and done.finish_reason == "error", done
            assert done.error is not None and done.error.code == "load_failed", done
            assert "config" in done.error.message
        after = status(client)
        assert not after.loaded and after.load_stage is None and after.state == "serving"
    finally:
        hidden.rename(config)
    client.send("z", request)
    assert answer(list(client.stream("z"))) == reference


def test_a_reload_asks_for_the_plan_measured_at_start_up() -> None:
    """dtype, threads and lanes chosen at start-up go back in, so nothing is measured again."""
    from axchat.actors.backends.base import BackendInfo
    from axchat.daemon.config import ServeConfig
    from axchat.daemon.model_load import device_loader

    chosen = BackendInfo(backend="torch", model="m", device="cpu", dtype="float32", context_length=64,
                         vocab_size=10, threads=1, lanes=2)
    for asked in (None, 2):  # measured from the usable cores, or within --threads 2
        loader = device_loader(ServeConfig(model="m", backend="torch", threads=asked), "m", chosen)
        backend, model, options = loader.args  # type: ignore[attr-defined]
        assert (backend, model) == ("torch", "m")
        assert (options.dtype, options.threads, options.lanes) == ("float32", 1, 2)
