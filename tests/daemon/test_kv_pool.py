"""A pool of KV cells smaller than every running sequence's whole context (llama.cpp's
running pool; here `--running-kv-mb 1` gives the tiny model one context, 8192 cells)
fails no request: a prompt that does not fit waits while the stream already answering
goes on, and streams that outgrow the pool together are parked in host memory, one at a
time, and come back to finish with the tokens they make alone."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from conftest import HELD, DaemonProcess, RawClient, collect, serving
from test_speculative_identity import Reply, run, same, together

from axchat.protocol import v1

POOL = ("--context", "8192", "--running-kv-mb", "1")
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def words(n: int, seed: int) -> str:
    pick = random.Random(seed)
    return " ".join(pick.choice(WORDS) for _ in range(n))


def raw_prompt(text: str, **sampling: object) -> v1.Generate:
    return v1.Generate(prompt=text, sampling=v1.Sampling(**sampling))  # type: ignore[arg-type]


def prompt_tokens(d: DaemonProcess, text: str) -> int:
    return run(d, raw_prompt(text, max_tokens=1)).done.usage.prompt_tokens


def one_context_of_cells(d: DaemonProcess) -> None:
    assert "8192 KV cells" in d.log_text(), "the test needs a pool of one context"


def status_of(client: RawClient, rid: str) -> v1.RequestInfo | None:
    reply = client.request(v1.Status())
    assert isinstance(reply, v1.StatusReply), reply
    return next((r for r in reply.requests if r.id.partition("@")[0] == rid), None)


def deltas(stream: Iterator[v1.DaemonMessage], n: int) -> None:
    """The next `n` deltas of a stream that must still be going."""
    for _ in range(n):
        body = next(stream)
        assert isinstance(body, v1.Delta), body


@pytest.fixture(scope="module")
def pooled(tiny_model_dir) -> Iterator[DaemonProcess]:  # type: ignore[no-untyped-def]
    """The default path (llama.cpp, q8_0) with a pool of one context."""
    for d in serving(tiny_model_dir, *POOL):
        one_context_of_cells(d)
        yield d


def test_a_prompt_that_does_not_fit_waits_while_the_stream_before_it_goes_on(pooled: DaemonProcess) -> None:
    d = pooled
    first, second = words(1500, 1), words(1500, 2)
    sizes = prompt_tokens(d, first), prompt_tokens(d, second)
    assert sum(sizes) > 8192 > max(sizes), sizes  # each fits alone, not both
    a, b, watch = RawClient(d.socket), RawClient(d.socket), RawClient(d.socket)
    try:
        a.send("a", raw_prompt(first, temperature=0.0, **HELD))  # paced: it runs until cancelled
        stream_a = a.stream("a")
        deltas(stream_a, 1)
        b.send("b", raw_prompt(second, max_tokens=8, temperature=0.0, ignore_eos=True))
        while (seen := status_of(watch, "b")) is None or seen.state == "queued":
            deltas(stream_a, 1)  # the device has not taken it in yet
        deltas(stream_a, 20)  # the stream goes on beside it...
        waiting = status_of(watch, "b")
        assert waiting is not None and waiting.prefilled_tokens == 0, waiting  # ...and it waits, unfed
        a.send("a", v1.Cancel())
        rest = list(stream_a)
        assert isinstance(rest[-1], v1.Done) and rest[-1].finish_reason == "cancelled", rest[-1]
        tokens, _, done = collect(b, "b")
        assert (done.finish_reason, done.error, len(tokens)) == ("length", None, 8)
    finally:
        for c in (a, b, watch):
            c.close()
    assert "no room in the KV cache" not in d.log_text()


@pytest.fixture(scope="module")
def pooled_f32(tiny_model_dir) -> Iterator[DaemonProcess]:  # type: ignore[no-untyped-def]
    """float32: a stream's logits do not depend on the other sequences' cells, so a
    parked and restored stream must give exactly its tokens alone."""
    for d in serving(tiny_model_dir, *POOL, "--dtype", "float32"):
        one_context_of_cells(d)
        yield d


def test_streams_that_outgrow_the_pool_are_parked_and_finish_with_their_own_tokens(pooled_f32: DaemonProcess) -> None:
    d = pooled_f32
    # Three prompts fit together with room to spare; their replies do not.
    requests = [raw_prompt(words(600, seed), max_tokens=1000, temperature=0.0, ignore_eos=True) for seed in (3, 4, 5)]
    sizes = [prompt_tokens(d, r.prompt or "") for r in requests]
    assert sum(sizes) + 200 < 8192 < sum(sizes) + 3 * 1000, sizes
    replies: list[Reply] = together(d, requests)
    assert [(r.done.finish_reason, r.done.error) for r in replies] == [("length", None)] * 3
    assert "parked until an older one ends" in d.log_text()
    for request, reply in zip(requests, replies, strict=True):
        same(reply, run(d, request))
