"""Speculative decoding changes no greedy token: daemons with it off, on (n-gram drafts,
the default) and on with oracle drafts (an earlier reply, half of it corrupted, through
the test-only `$AXCHAT_TEST_ORACLE_DRAFTS`) give the same replies, on the tiny test model
and the bundled axchat-mini, over stop strings, length limits, cancels, concurrent
streams and a conversation's second turn (prefix reuse). Sampled requests never
speculate, so they need no test here."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import HELD, DaemonProcess, RawClient, chat, collect

from axchat.actors.device.drafts import ORACLE_ENV
from axchat.protocol import v1

# Text a model can copy from: prompt lookup finds its n-grams again.
COPY = "Repeat after me: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog."
PROMPTS = [COPY, "Tell me a story about a robot.", "1 2 3 4 5 6 7 8 9 10 11 12", "hello"]


@dataclass
class Trio:
    off: DaemonProcess
    ngram: DaemonProcess
    oracle: DaemonProcess
    oracle_file: Path

    def all(self) -> list[DaemonProcess]:
        return [self.off, self.ngram, self.oracle]


def _trio(model: Path | None, oracle_file: Path, *flags: str) -> Iterator[Trio]:
    daemons = [
        DaemonProcess(model, "--speculate", "off", *flags),
        DaemonProcess(model, *flags),
        DaemonProcess(model, *flags, env={ORACLE_ENV: str(oracle_file)}),
    ]
    for d in daemons:
        d.wait_ready()
    yield Trio(*daemons, oracle_file)
    for d in daemons:
        assert d.stop() == 0, d.log_text()


@pytest.fixture(scope="module", params=["tiny", "axchat-mini"])
def trio(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    """The default path (llama.cpp, q8_0) with each speculation mode."""
    model = tiny_model_dir if request.param == "tiny" else None
    yield from _trio(model, tmp_path_factory.mktemp("oracle") / "drafts.json")


@pytest.fixture(scope="module")
def trio_f32(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    """Concurrent streams compare only where a stream's logits do not depend on what
    else is in the batch: float32 weights and KV, plain attention (q8_0's flash attention
    moves them by ~1e-5 with other sequences' cells, without any speculation)."""
    yield from _trio(tiny_model_dir, tmp_path_factory.mktemp("oracle") / "drafts.json", "--dtype", "float32")


@dataclass
class Reply:
    token_ids: list[int]
    text: str
    done: v1.Done


def run(d: DaemonProcess, request: v1.Generate, rid: str = "r") -> Reply:
    client = RawClient(d.socket)
    try:
        client.send(rid, request)
        return Reply(*collect(client, rid))
    finally:
        client.close()


def together(d: DaemonProcess, requests: list[v1.Generate], timeout_s: float = 120) -> list[Reply]:
    """The replies to `requests`, sent at once, each on a connection of its own."""
    got: list[Reply | None] = [None] * len(requests)

    def one(i: int) -> None:
        got[i] = run(d, requests[i], rid=f"c{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
    assert all(g is not None for g in got), "a concurrent request got no reply"
    return [g for g in got if g is not None]


def on_one_connection(d: DaemonProcess, requests: list[v1.Generate]) -> list[Reply]:
    """The replies to `requests`, one after the other on one connection (whose kept
    prefixes are its own)."""
    client = RawClient(d.socket)
    try:
        replies = []
        for i, request in enumerate(requests):
            client.send(f"t{i}", request)
            replies.append(Reply(*collect(client, f"t{i}")))
    finally:
        client.close()
    return replies


def same(a: Reply, b: Reply) -> None:
    assert (a.token_ids, a.text, a.done.finish_reason, a.done.usage.completion_tokens) == (
        b.token_ids,
        b.text,
        b.done.finish_reason,
        b.done.usage.completion_tokens,
    )


def with_oracle(trio: Trio, reply: Reply, corrupt: float) -> None:
    """The oracle daemon's next streams propose `reply`'s tokens, a share `corrupt` wrong."""
    trio.oracle_file.write_text(json.dumps({"reply": reply.token_ids, "corrupt": corrupt, "seed": 1}))


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 9, 40, 120])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_replies_are_identical(trio: Trio, prompt: str, max_tokens: int) -> None:
    request = chat(prompt, max_tokens=max_tokens, temperature=0.0)
    want = run(trio.off, request)
    with_oracle(trio, run(trio.off, chat(prompt, max_tokens=max_tokens + 8, temperature=0.0)), 0.5)
    for d in (trio.ngram, trio.oracle):
        same(run(d, request), want)


def test_oracle_drafts_are_verified_and_counted(trio: Trio) -> None:
    request = chat(COPY, max_tokens=60, temperature=0.0, ignore_eos=True)
    want = run(trio.off, request)
    for corrupt in (0.0, 0.5, 1.0):
        with_oracle(trio, want, corrupt)
        got = run(trio.oracle, request)
        same(got, want)
        assert got.done.stats is not None and got.done.stats.draft_proposed > 0
        if corrupt == 0.0:
            assert got.done.stats.draft_accepted > got.done.stats.draft_proposed // 2
        if corrupt == 1.0:
            assert got.done.stats.draft_accepted == 0
    assert want.done.stats is not None and want.done.stats.draft_proposed == 0
    client = RawClient(trio.oracle.socket)
    try:
        status = client.request(v1.Status())
    finally:
        client.close()
    assert isinstance(status, v1.StatusReply)
    assert status.draft_accepted_total > 0 and status.draft_proposed_total > status.draft_accepted_total


def test_stop_strings_end_replies_alike(trio: Trio) -> None:
    base = run(trio.off, chat(COPY, max_tokens=80, temperature=0.0, ignore_eos=True))
    words = base.text.split()
    if len(words) < 4:
        pytest.skip("the model's reply has too few words to pick a stop string from")
    stop = words[len(words) // 2]
    request = chat(COPY, max_tokens=80, temperature=0.0, ignore_eos=True, stop=[stop])
    want = run(trio.off, request)
    assert want.done.finish_reason == "stop"
    with_oracle(trio, base, 0.25)
    for d in (trio.ngram, trio.oracle):
        same(run(d, request), want)


@pytest.mark.parametrize("streams", [2, 8])
def test_concurrent_streams_are_identical(trio_f32: Trio, streams: int) -> None:
    trio = trio_f32
    requests = [chat(f"{PROMPTS[i % len(PROMPTS)]} ({i})", max_tokens=48, temperature=0.0) for i in range(streams)]
    want = [run(trio.off, r) for r in requests]
    with_oracle(trio, want[0], 0.0)  # right for one stream, wrong for the others
    for d in (trio.ngram, trio.oracle):
        got = together(d, requests)
        for g, w in zip(got, want, strict=True):
            same(g, w)
        if d is trio.oracle and streams < 8:  # rows to spare: the right stream's drafts are verified
            assert sum(g.done.stats.draft_accepted for g in got) > 0


def cancelled_after(d: DaemonProcess, request: v1.Generate, tokens: int) -> list[int]:
    """The token ids of a (held) request cancelled once it has streamed `tokens`; it must
    end as cancelled."""
    client = RawClient(d.socket)
    try:
        client.send("held", request)
        ids: list[int] = []
        stream = client.stream("held")
        for body in stream:
            assert isinstance(body, v1.Delta)
            ids += body.token_ids
            if len(ids) >= tokens:
                break
        client.send("held", v1.Cancel())
        for body in stream:
            if isinstance(body, v1.Delta):
                ids += body.token_ids
            else:
                assert isinstance(body, v1.Done) and body.finish_reason == "cancelled"
    finally:
        client.close()
    return ids


def test_cancel_mid_run_keeps_the_tokens_so_far_and_the_daemon_exact(trio: Trio) -> None:
    reference = run(trio.off, chat(COPY, max_tokens=200, temperature=0.0, ignore_eos=True))
    with_oracle(trio, reference, 0.0)
    for d in (trio.ngram, trio.oracle):
        ids = cancelled_after(d, chat(COPY, temperature=0.0, **HELD), 5)
        n = min(len(ids), len(reference.token_ids))
        assert ids[:n] == reference.token_ids[:n]
        # What the cancelled stream left in the KV does not leak into the next one.
        same(run(d, chat(COPY, max_tokens=40, temperature=0.0)), run(trio.off, chat(COPY, max_tokens=40, temperature=0.0)))


def test_second_turn_reuses_the_prefix_and_stays_identical(trio: Trio) -> None:
    first = [v1.ChatMessage(role="user", content=COPY)]
    turn = run(trio.off, v1.Generate(messages=first, sampling=v1.Sampling(max_tokens=40, temperature=0.0)))
    history = [*first, v1.ChatMessage(role="assistant", content=turn.text), v1.ChatMessage(role="user", content="Again.")]
    second = v1.Generate(messages=history, sampling=v1.Sampling(max_tokens=40, temperature=0.0))
    want = run(trio.off, second)
    with_oracle(trio, want, 0.25)
    for d in (trio.ngram, trio.oracle):
        replies = on_one_connection(d, [v1.Generate(messages=first, sampling=second.sampling), second])
        same(replies[1], want)
        assert replies[1].done.usage.cached_tokens > 0
