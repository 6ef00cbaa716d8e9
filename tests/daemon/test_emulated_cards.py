"""Several emulated Metis cards in one daemon (`--devices`), as real subprocesses: requests
spread over the cards, a conversation's later turns go back to its first turn's card,
fairness between clients holds across cards (one line, not one per card), a card busy
at start or failing while serving is left out (status says so) while the others serve,
and per-card status. The AIPU emulator is the only fake; requests are held with the test
launcher's gate (conftest.HELD), never with long answers or sleeps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HELD, DaemonProcess, RawClient, chat, short_socket_dir
from test_notify import NotifyListener

from axchat.actors.backends.aipu import emulator as emu
from axchat.protocol import v1

CARDS = "a=16,b=16,c=16"
WAIT_S = 60.0


def cards_daemon(model: Path, tmp: Path, *extra: str, cards: str = CARDS, notify: str = "") -> DaemonProcess:
    env = {emu.LOCK_DIR_ENV: str(tmp / "card"), "XDG_CACHE_HOME": str(tmp / "cache"), emu.CARDS_ENV: cards}
    if notify:
        env["NOTIFY_SOCKET"] = notify  # as systemd's
    return DaemonProcess(model, "--device", "aipu", "--aipu-runtime", "emulator", *extra, env=env)


@pytest.fixture(scope="module")
def three_cards(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = cards_daemon(tiny_model_dir, tmp_path_factory.mktemp("three-cards"), "--devices", "all").wait_ready()
    yield d
    assert d.stop() == 0, d.log_text()


def status_of(client: RawClient) -> v1.StatusReply:
    reply = client.request(v1.Status())
    assert isinstance(reply, v1.StatusReply), reply
    return reply


def wait_status(client: RawClient, ok: object, what: str) -> v1.StatusReply:
    """Status until `ok(status)` holds, within a deadline (each answer is an event: the
    daemon's state changes as requests move, no timer is involved)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        status = status_of(client)
        if ok(status):  # type: ignore[operator]
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"status never showed {what}: {status}")


def first_delta(client: RawClient, rid: str) -> None:
    _, body = client.recv(want=rid)
    while isinstance(body, v1.Queued):
        _, body = client.recv(want=rid)
    assert isinstance(body, v1.Delta), body


def finish(client: RawClient, rid: str) -> v1.Done:
    done = list(client.stream(rid))[-1]
    assert isinstance(done, v1.Done), done
    return done


def test_emulated_cards_spread_requests_one_per_card_with_status_per_card(three_cards: DaemonProcess) -> None:
    clients = [RawClient(three_cards.socket) for _ in range(3)]
    try:
        for i, client in enumerate(clients):
            client.send(f"h{i}", chat(f"hold {i}", **HELD))
        for i, client in enumerate(clients):
            first_delta(client, f"h{i}")  # each has a card: a card runs one sequence at a time
        status = status_of(clients[0])
        assert status.device == "3 devices: a (emulated), b (emulated), c (emulated)"
        assert [(d.name, d.label, d.state, d.running, d.max_running) for d in status.devices] == [
            ("device-0", "a (emulated)", "serving", 1, 1),
            ("device-1", "b (emulated)", "serving", 1, 1),
            ("device-2", "c (emulated)", "serving", 1, 1),
        ]
        assert (status.running, status.queued, status.max_running) == (3, 0, 3)
        for i, client in enumerate(clients):
            client.send(f"h{i}", v1.Cancel())
            assert finish(client, f"h{i}").finish_reason == "cancelled"
        # Sampled requests: the sampler answers the card that sent the logits.
        for i, client in enumerate(clients):
            client.send(f"s{i}", chat(f"sample {i}", max_tokens=5, ignore_eos=True, temperature=0.8, seed=i))
        done = [finish(client, f"s{i}") for i, client in enumerate(clients)]
        assert [(d.finish_reason, d.usage.completion_tokens) for d in done] == [("length", 5)] * 3, done
        assert len({d.stats.device for d in done}) == 3, done
    finally:
        for client in clients:
            client.close()


def test_emulated_cards_later_turns_go_back_to_the_first_turns_card(three_cards: DaemonProcess) -> None:
    """With every card idle the least loaded is the one placed on longest ago, so without
    affinity a conversation's turns would walk round the cards; with it they stay."""
    talker, other = RawClient(three_cards.socket), RawClient(three_cards.socket)
    try:
        before = {d.name: d.affinity_hits for d in status_of(talker).devices}
        history = [v1.ChatMessage(role="user", content="Tell me about rivers and the sea, please.")]
        served: list[str] = []
        walked: list[str] = []
        for turn in range(3):
            talker.send(f"t{turn}", v1.Generate(messages=history, sampling=v1.Sampling(max_tokens=6, ignore_eos=True)))
            text = ""
            for body in talker.stream(f"t{turn}"):
                if isinstance(body, v1.Delta):
                    text += body.text
            assert isinstance(body, v1.Done) and body.finish_reason == "length", body
            served.append(body.stats.device)
            history += [v1.ChatMessage(role="assistant", content=text), v1.ChatMessage(role="user", content="And then?")]
            # Another client's one-off question between turns: it has no prefix anywhere.
            other.send(f"o{turn}", chat(f"question {turn}", max_tokens=2, ignore_eos=True))
            walked.append(finish(other, f"o{turn}").stats.device)
        assert served[0].startswith("device-") and served == [served[0]] * 3, served
        assert len(set(walked)) > 1, walked  # without a prefix, requests go round the cards
        after = {d.name: d.affinity_hits for d in status_of(talker).devices}
        assert after[served[0]] - before[served[0]] == 2
    finally:
        talker.close()
        other.close()


def test_emulated_cards_fairness_holds_across_cards(three_cards: DaemonProcess) -> None:
    """One line for all cards: a client with many requests waiting does not get more
    than its turn because there are several cards. A greedy client fills every card
    (held) and queues four more; two other clients then come next in line, not behind
    all four, and when the cards free they are placed first, one each."""
    greedy, b, c = (RawClient(three_cards.socket) for _ in range(3))
    try:
        for i in range(3):
            greedy.send(f"g{i}", chat(f"hold {i}", **HELD))
        for i in range(3):
            first_delta(greedy, f"g{i}")
        for i in range(3, 7):
            greedy.send(f"g{i}", chat(f"more {i}", max_tokens=4, ignore_eos=True))
        b.send("b", chat("mine", max_tokens=4, ignore_eos=True))
        c.send("c", chat("mine too", max_tokens=4, ignore_eos=True))
        status = wait_status(greedy, lambda s: s.queued == 6, "six waiting")
        line = {r.id.split("@")[0]: r.queue_position for r in status.requests if r.state == "queued"}
        # Round robin across clients, in one line for every card: each client's first
        # waiting request in the first three places (in the order they came), the greedy
        # client's others after them.
        assert {line["g3"], line["b"], line["c"]} == {1, 2, 3}, line
        assert [line[k] for k in ("g4", "g5", "g6")] == [4, 5, 6], line
        assert all(d.queued == 0 for d in status.devices)  # no card keeps a line of its own
        for i in range(3):
            greedy.send(f"g{i}", v1.Cancel())
        done = {rid: finish(client, rid) for client, rid in ((b, "b"), (c, "c"), *((greedy, f"g{i}") for i in range(7)))}
        assert all(done[f"g{i}"].finish_reason == "cancelled" for i in range(3))
        # b and c waited less than the greedy client's last ones (placed in the second wave).
        assert max(done["b"].stats.queue_ms, done["c"].stats.queue_ms) < min(
            done["g5"].stats.queue_ms, done["g6"].stats.queue_ms
        ), {k: v.stats.queue_ms for k, v in done.items()}
    finally:
        for client in (greedy, b, c):
            client.close()


@pytest.fixture(scope="module")
def one_card_busy(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, Path]]:
    """Cards a, b, c with b held by another process's connection: `--devices all` must
    serve on a and c and say why b is out."""
    tmp = tmp_path_factory.mktemp("one-card-busy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(emu.LOCK_DIR_ENV, str(tmp / "card"))
        other = emu.Context(cards=CARDS)
        held = other.device_connect(other.list_devices()[1], num_sub_devices=4)
    try:
        d = cards_daemon(tiny_model_dir, tmp, "--devices", "all").wait_ready()
        yield d, tmp / "card"
        assert d.stop() == 0, d.log_text()
    finally:
        held.release()


def test_emulated_cards_a_busy_card_and_a_failing_card_are_left_out(one_card_busy: tuple[DaemonProcess, Path]) -> None:
    daemon, lock_dir = one_card_busy
    client = RawClient(daemon.socket)
    try:
        status = status_of(client)
        states = {d.label: (d.state, d.reason) for d in status.devices}
        assert states["a (emulated)"] == states["c (emulated)"] == ("serving", ""), states
        assert states["b"][0] == "down" and "in use" in states["b"][1], states
        assert status.max_running == 2
        assert "b left out" in daemon.log_text()

        # Card c stops responding while serving: at most two requests see its error
        # (one failure may be the request's; two in a row are the card's), then it is
        # taken out and every later request is served by a.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(emu.LOCK_DIR_ENV, str(lock_dir))
            emu.fail_marker("c").touch()  # the emulator's dead-card switch, read at every run
        outcomes = []
        for i in range(6):
            client.send(f"r{i}", chat(f"question {i}", max_tokens=3, ignore_eos=True))
            done = finish(client, f"r{i}")
            outcomes.append((done.finish_reason, done.stats.device, done.error))
        failed = [o for o in outcomes if o[0] == "error"]
        assert 1 <= len(failed) <= 2, outcomes
        assert all(o[2] is not None and "stopped responding" in o[2].message for o in failed), failed
        assert all(o[0] == "length" for o in outcomes[len(failed) + 2 :]), outcomes  # after it: all served
        status = status_of(client)
        c = next(d for d in status.devices if d.label == "c (emulated)")
        assert c.state == "down" and "failed in a row" in c.reason, c
        assert status.max_running == 1
        daemon.wait_for_line("taken out of placement")
    finally:
        client.close()


def test_emulated_cards_cpu_refuses_several_devices(tiny_model_dir: Path) -> None:
    d = DaemonProcess(tiny_model_dir, "--device", "cpu", "--devices", "2")
    code = d.proc.wait(timeout=WAIT_S)
    d.stop()
    assert code != 0
    assert "--devices 2: the CPU is one device" in d.log_text(), d.log_text()


def test_emulated_cards_keep_alive_unloads_each_card_on_its_own(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Also: the ready line and systemd's status name every card, not the first alone."""
    notify = str(short_socket_dir() / "notify")
    listener = NotifyListener(notify)
    d = cards_daemon(
        tiny_model_dir, tmp_path_factory.mktemp("keep-alive-cards"), "--devices", "2", "--keep-alive", "3s",
        cards="a,b", notify=notify,
    ).wait_ready()  # fmt: skip
    client = RawClient(d.socket)
    try:
        ready_line = next(line for line in d.lines if "ready:" in line)
        assert "2 devices: a (emulated), b (emulated)" in ready_line, ready_line
        _, ready = listener.until("READY")
        assert ready["STATUS"].endswith(" on 2 devices: a (emulated), b (emulated)"), ready
        wait_status(client, lambda s: [x.state for x in s.devices] == ["unloaded", "unloaded"], "both cards unloaded")
        said = listener.until("STATUS")[1]["STATUS"]
        while said != "serving 0 request(s), model unloaded (idle) on a (emulated), b (emulated)":
            said = listener.until("STATUS", timeout_s=10)[1]["STATUS"]  # refreshed within a tick of a change
        client.send("r", chat("wake one card", max_tokens=3, ignore_eos=True))
        done = finish(client, "r")
        assert done.finish_reason == "length", done
        states = {x.name: x.state for x in status_of(client).devices}
        # The card that served is loaded again; the other stayed unloaded (it may be
        # unloading once more already if three seconds passed).
        assert states[done.stats.device] in ("serving", "unloaded") and len(states) == 2, states
        other = next(name for name in states if name != done.stats.device)
        assert states[other] == "unloaded", states
        assert d.log_text().count("keep-alive: a request arrived; loading the model again") == 1
        # The next request goes to the card that holds the model, not to the idle one
        # that would have to load it again (its keep-alive is long enough for both).
        client.send("r2", chat("and again", max_tokens=3, ignore_eos=True))
        again = finish(client, "r2")
        assert again.stats.device == done.stats.device, (again, done)
        assert d.log_text().count("keep-alive: a request arrived; loading the model again") == 1
    finally:
        client.close()
        listener.close()
        assert d.stop() == 0, d.log_text()
