"""The device actor's schedule, in process, on each real CPU backend (torch's lean path,
llama.cpp) with a call log:
a long prompt is prefilled in chunks with other sequences' decode steps between them;
newcomers' short prompts go in one forward together."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq.asyncio
from bus_teardown import assert_context_terminates, close_actors

from axchat.actors import messages as m
from axchat.actors.backends.base import DeviceBackend
from axchat.actors.backends.load_options import LoadOptions
from axchat.actors.backends.torch_engine import load as torch_load
from axchat.actors.device import run_ahead
from axchat.actors.device.actor import DeviceActor
from axchat.actors.device.planner import ALONE_CHUNK
from axchat.actors.device.prompt_chunks import MIN_TOKENS, ROUND
from axchat.actors.mailbox import Actor, Bus
from axchat.actors.sampler import SamplerActor
from axchat.actors.status import DeviceSection
from axchat.protocol import v1
from axchat.protocol.v1 import Sampling


class LoggedTorchBackend:
    """The real backend as the daemon loads it, recording each call as (kind, sequence
    ids, tokens fed); everything else goes straight to it."""

    def __init__(self, inner: DeviceBackend) -> None:
        self.inner = inner
        self.info = inner.info
        self.capabilities = inner.capabilities
        self.calls: list[tuple[str, tuple[int, ...], int]] = []
        # A call of kind `hold` waits on the device thread (once `held` says so) until
        # `gate` is set: what the actor does meanwhile is then what the test arranges.
        self.hold: str | None = None
        self.gate = threading.Event()
        self.held = threading.Event()
        self.threads: set[str] = set()  # every thread that called into the backend

    def __getattr__(self, name: str) -> object:
        found = getattr(self.inner, name)
        if not callable(found):
            return found

        def call(*args: object) -> object:
            self.threads.add(threading.current_thread().name)
            return found(*args)

        return call

    def _log(self, kind: str, seq_ids: tuple[int, ...], tokens: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.append((kind, seq_ids, tokens))
        if kind == self.hold and not self.gate.is_set():
            self.held.set()
            assert self.gate.wait(30), "the test never opened the gate"

    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        self._log("prefill", (seq_id,), len(token_ids))
        return self.inner.prefill(seq_id, token_ids)

    def extend(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        self._log("extend", (seq_id,), len(token_ids))
        return self.inner.extend(seq_id, token_ids)

    def extend_batch(self, seq_ids: Sequence[int], pieces: Sequence[Sequence[int]]) -> np.ndarray:
        self._log("extend_batch", tuple(seq_ids), sum(len(p) for p in pieces))
        return self.inner.extend_batch(seq_ids, pieces)

    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        self._log("decode", tuple(seq_ids), len(token_ids))
        return self.inner.decode(seq_ids, token_ids)

    def decode_and_extend(
        self,
        seq_ids: Sequence[int],
        token_ids: Sequence[int],
        chunk_seqs: Sequence[int],
        chunks: Sequence[Sequence[int]],
    ) -> tuple[np.ndarray, np.ndarray]:
        # tokens: the prompt pieces'
        self._log("decode+extend", (*seq_ids, *chunk_seqs), sum(len(c) for c in chunks))
        return self.inner.decode_and_extend(seq_ids, token_ids, chunk_seqs, chunks)


class Collector(Actor):
    """Stands in for the tokenizer: counts tokens per request and notes endings."""

    def __init__(self, bus: Bus, sup: object, name: str) -> None:
        self.name = name
        super().__init__(bus, sup)  # type: ignore[arg-type]
        self.tokens: dict[int, int] = {}
        self.pieces: dict[int, list[int]] = {}  # tokens per TokenOut message, per request
        self.ended: dict[int, m.Ended] = {}
        self.reports: list[DeviceSection] = []
        self.changed = asyncio.Event()

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.TokenOut):
            self.tokens[msg.rid] = self.tokens.get(msg.rid, 0) + len(msg.token_ids)
            self.pieces.setdefault(msg.rid, []).append(len(msg.token_ids))
        elif isinstance(msg, m.Ended):
            self.ended[msg.rid] = msg
        elif isinstance(msg, m.StatusQuery) and msg.device is not None:
            self.reports.append(msg.device)
        self.changed.set()

    async def until(self, predicate, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class FailLoudly:
    def on_handler_error(self, actor: Actor, msg: m.ActorMessage, exc: BaseException) -> None:
        raise AssertionError(f"{actor.name} failed on {msg}") from exc

    def on_task_error(self, actor: Actor, task_name: str, exc: BaseException) -> None:
        raise AssertionError(f"{actor.name} lost its task {task_name}") from exc


@pytest.fixture(params=["torch", "llamacpp-f32", "llamacpp"])
def engine(request: pytest.FixtureRequest, tiny_model_dir: Path) -> DeviceBackend:
    """torch; llama.cpp in f32; llama.cpp as a flag-less daemon loads it (q8_0)."""
    if request.param.startswith("llamacpp"):
        from axchat.actors.backends.llamacpp import load

        if request.param == "llamacpp-f32":
            request.getfixturevalue("llamacpp_f32_gguf")  # converts once per session
            return load.load(str(tiny_model_dir), quant="f32", threads=1)
        return load.load(str(tiny_model_dir), threads=1)
    return torch_load.load(str(tiny_model_dir), LoadOptions(threads=1))


@pytest.fixture
async def rig(request: pytest.FixtureRequest, engine: DeviceBackend) -> AsyncIterator[tuple[Bus, LoggedTorchBackend, Collector, DeviceActor, Collector]]:
    backend = LoggedTorchBackend(engine)
    # Indirect parameter: whether decode steps may carry prompt chunks (the lean path's
    # default); without, they alternate, as on backends that cannot.
    mixed = getattr(request, "param", True)
    backend.capabilities = dataclasses.replace(backend.capabilities, prefill_chunk=64, mixed_steps=mixed)
    ctx = zmq.asyncio.Context()
    bus = Bus(ctx, "sched")
    sup = FailLoudly()
    tokenizer = Collector(bus, sup, "tokenizer")
    telemetry = Collector(bus, sup, "reply")
    device = DeviceActor(bus, sup, backend)  # type: ignore[arg-type]
    others = [telemetry, SamplerActor(bus, sup), device]  # type: ignore[arg-type]
    tasks = [asyncio.create_task(a.run()) for a in [tokenizer, *others]]
    yield bus, backend, tokenizer, device, telemetry
    await close_actors(bus, [tokenizer, *others], tasks)
    assert_context_terminates(ctx)


def admit(rid: int, n_prompt: int, max_tokens: int) -> m.Admit:
    return m.Admit(
        rid=rid,
        label=f"r{rid}",
        client=f"c{rid}",
        prompt_ids=[5 + (i % 50) for i in range(n_prompt)],
        sampling=Sampling(max_tokens=max_tokens, ignore_eos=True),
        eos_ids=[2],
    )


@pytest.mark.parametrize("rig", [True, False], ids=["chunks-ride-in-decode-steps", "chunks-alternate"], indirect=True)
async def test_long_prompt_is_chunked_between_decode_steps(rig) -> None:  # type: ignore[no-untyped-def]
    bus, backend, tokenizer, device, telemetry = rig
    mixed = backend.capabilities.mixed_steps
    sender = Collector(bus, FailLoudly(), "test-sender")
    try:
        # The long prompt arrives while request 1's first decode step holds the device:
        # request 1 is decoding then, on any machine, and has steps to spare for every chunk.
        backend.hold = "decode"
        await sender.send("device", admit(1, 8, max_tokens=4000))
        await arrive_while_held(backend, sender, telemetry, [admit(2, 300, max_tokens=5)])
        await tokenizer.until(lambda: 2 in tokenizer.ended)
        await sender.send("device", m.CancelRequest(rid=1))
        await tokenizer.until(lambda: 1 in tokenizer.ended)
    finally:
        sender.discard()

    feeds = ("prefill", "extend", "decode+extend")
    long_calls = [i for i, (kind, seqs, _) in enumerate(backend.calls) if kind in feeds and seqs[-1] == 2]
    chunks = [backend.calls[i][2] for i in long_calls]
    # 300 tokens in chunks: the first of the backend's 64, then sized from measured costs.
    assert sum(chunks) == 300 and chunks[0] == 64 and len(chunks) >= 2
    assert all(c <= ALONE_CHUNK and (c % ROUND == 0 or c in (MIN_TOKENS, chunks[-1])) for c in chunks)
    # The short request kept streaming: each chunk went in one of its decode steps, or
    # a decode step of its came after every chunk.
    if mixed:
        assert all(backend.calls[i][0] == "decode+extend" and backend.calls[i][1] == (1, 2) for i in long_calls)
    else:
        between = backend.calls[long_calls[0] : long_calls[-1]]
        assert all(backend.calls[i][0] == "extend" for i in long_calls)
        assert len([c for c in between if c[0] == "decode" and 1 in c[1]]) >= len(long_calls) - 1
    assert any(c[0] == "decode" and set(c[1]) == {1, 2} for c in backend.calls)  # then they batch
    assert tokenizer.ended[2].completion_tokens == 5 and tokenizer.ended[2].reason == "length"
    assert tokenizer.ended[1].reason == "cancelled"
    # Releases run on the device thread after any forward in flight; anything queued
    # there after them runs after them.
    await device._thread.run(lambda: None)
    # Every call the actor made (forwards, starts, releases, status reads) ran on the
    # device thread.
    assert backend.threads and all(name.startswith("axchat-device") for name in backend.threads), backend.threads
    assert backend.inner.live_sequences() == 0


@pytest.mark.parametrize("rig", [True, False], ids=["mixed-steps", "no-mixed-steps"], indirect=True)
async def test_newcomers_short_prompts_go_in_one_forward_together(rig) -> None:  # type: ignore[no-untyped-def]
    """Without mixed steps, all in one forward; with them, the newcomers that outnumber
    the running stream send a lead group ahead and the rest ride whole in its steps."""
    bus, backend, tokenizer, _, telemetry = rig
    sender = Collector(bus, FailLoudly(), "test-sender")
    try:
        backend.hold = "decode"  # request 1's first decode step holds the device
        await sender.send("device", admit(1, 8, max_tokens=6))
        await arrive_while_held(backend, sender, telemetry, [admit(2, 30, 6), admit(3, 11, 6), admit(4, 50, 6)])
        await tokenizer.until(lambda: len(tokenizer.ended) == 4)
    finally:
        sender.discard()

    feeds = [c for c in backend.calls if c[0] in ("prefill", "extend", "extend_batch", "decode+extend")]
    assert feeds[0] == ("extend", (1,), 8)
    if backend.capabilities.mixed_steps:
        # One stream, three newcomers: the two that hold the median of the two it does
        # not outnumber go together, then the last rides whole in the decode step of all.
        assert feeds[1:] == [("extend_batch", (2, 3), 41), ("decode+extend", (1, 2, 3, 4), 50)]
    else:
        # All three newcomers, whole prompts, in one forward (prefix restore found nothing).
        assert feeds[1:] == [("extend_batch", (2, 3, 4), 91)]
    assert any(c[0] == "decode" and set(c[1]) == {1, 2, 3, 4} for c in backend.calls)
    assert all(e.completion_tokens == 6 and e.reason == "length" for e in tokenizer.ended.values())



@pytest.mark.parametrize("rig", [True, False], ids=["mixed-steps", "no-mixed-steps"], indirect=True)
async def test_an_idle_device_waits_for_a_burst_the_tokenizer_is_still_encoding(rig) -> None:  # type: ignore[no-untyped-def]
    """Without mixed steps it waits for the whole burst; with them, for its lead group
    (the smallest that holds the median prompt), the rest riding behind together."""
    bus, backend, tokenizer, device, _ = rig
    device.burst.gather_s = 60.0  # longer than any test: the last arrival, not the deadline, ends the wait
    sender = Collector(bus, FailLoudly(), "test-sender")
    try:
        # The tokenizer says four more prompts are being encoded, then three... then none.
        for rid in range(1, 6):
            await sender.send("device", msgspec.structs.replace(admit(rid, 20 + rid, 4), more_coming=5 - rid))
        await tokenizer.until(lambda: len(tokenizer.ended) == 5)
    finally:
        sender.discard()

    feeds = [c for c in backend.calls if c[0] in ("prefill", "extend", "extend_batch", "decode+extend")]
    if backend.capabilities.mixed_steps:
        # Three of five first, then the other two ride in the streams' first step, both.
        assert feeds == [("extend_batch", (1, 2, 3), 66), ("decode+extend", (1, 2, 3, 4, 5), 49)]
        # Then they decode together until the first three, a step ahead, end; the two
        # riders end together.
        assert [set(c[1]) for c in backend.calls if c[0] == "decode"] == [{1, 2, 3, 4, 5}] * 2 + [{4, 5}]
    else:
        assert feeds == [("extend_batch", (1, 2, 3, 4, 5), 115)]  # one forward for the whole burst
        assert all(c[0] != "decode" or set(c[1]) == {1, 2, 3, 4, 5} for c in backend.calls)


async def test_a_burst_that_never_arrives_delays_the_first_prompt_only_until_the_deadline(rig) -> None:  # type: ignore[no-untyped-def]
    bus, _, tokenizer, device, _ = rig
    device.burst.gather_s = 0.05
    sender = Collector(bus, FailLoudly(), "test-sender")
    try:
        # Announced, then never sent (say its prompt was too long and rejected).
        await sender.send("device", msgspec.structs.replace(admit(1, 12, 3), more_coming=1))
        await tokenizer.until(lambda: 1 in tokenizer.ended)
    finally:
        sender.discard()
    assert tokenizer.ended[1].completion_tokens == 3


async def test_a_short_prompt_goes_before_a_long_prompts_next_chunk(rig) -> None:  # type: ignore[no-untyped-def]
    _, backend, tokenizer, _, telemetry = rig
    sender = Collector(rig[0], FailLoudly(), "test-sender")
    try:
        backend.hold = "extend"  # the long prompt's first chunk holds the device
        await sender.send("device", admit(1, 600, max_tokens=2))  # more than a chunk + WHOLE_PROMPT
        await arrive_while_held(backend, sender, telemetry, [admit(2, 8, max_tokens=3)])
        await tokenizer.until(lambda: len(tokenizer.ended) == 2)
    finally:
        sender.discard()

    feeds = [c for c in backend.calls if c[0] in ("extend", "decode+extend")]
    long_chunks = [c[2] for c in feeds if c[1][-1] == 1]
    assert feeds[0] == ("extend", (1,), ALONE_CHUNK)  # nobody decoding: the largest chunk
    assert feeds[1] == ("extend", (2,), 8)  # then the short one, whole, before the rest
    assert sum(long_chunks) == 600
    assert tokenizer.ended[1].completion_tokens == 2 and tokenizer.ended[2].completion_tokens == 3


async def test_a_lone_greedy_stream_runs_its_steps_on_the_device_thread(rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bus, backend, tokenizer, _, _ = rig
    monkeypatch.setattr(run_ahead, "BUDGET_MS", 60_000.0)  # bounded by the stream, not the clock
    sender = Collector(bus, FailLoudly(), "test-sender")
    try:
        await sender.send("device", admit(1, 8, max_tokens=12))
        await tokenizer.until(lambda: 1 in tokenizer.ended)
    finally:
        sender.discard()
    # The prompt's token, then the other 11 from one run: one message, one trip.
    assert tokenizer.pieces[1] == [1, 11]
    assert tokenizer.ended[1].completion_tokens == 12 and tokenizer.ended[1].reason == "length"
    assert [c[0] for c in backend.calls].count("decode") == 11  # still one forward a token


async def test_a_newcomer_ends_a_run_at_the_next_step(rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bus, backend, tokenizer, _, telemetry = rig
    monkeypatch.setattr(run_ahead, "BUDGET_MS", 60_000.0)
    sender = Collector(bus, FailLoudly(), "test-sender")
    try:
        backend.hold = "decode"  # the run's first step holds the device
        await sender.send("device", admit(1, 8, max_tokens=40))
        await arrive_while_held(backend, sender, telemetry, [admit(2, 8, max_tokens=3)])
        await tokenizer.until(lambda: len(tokenizer.ended) == 2)
    finally:
        sender.discard()
    # Request 1's run stopped after the held step: the newcomer's prompt went in next,
    # not 38 more steps of request 1 alone.
    first = next(i for i, c in enumerate(backend.calls) if c[0] == "decode")
    assert backend.calls[first] == ("decode", (1,), 1)
    assert 2 in backend.calls[first + 1][1], backend.calls[first : first + 3]
    assert tokenizer.ended[1].completion_tokens == 40 and tokenizer.ended[2].completion_tokens == 3


async def arrive_while_held(backend, sender, telemetry, admits, running: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """Send `admits` while the held call waits on the device thread, make sure the device
    actor has taken them in, then let the call go on."""
    assert await asyncio.get_running_loop().run_in_executor(None, backend.held.wait, 30)
    for msg in admits:
        await sender.send("device", msg)
    # The device handles its mail in order: its answer to this comes after the admits.
    await sender.send("device", m.StatusQuery(rid=99, state=v1.DaemonState.SERVING))
    await telemetry.until(lambda: bool(telemetry.reports))
    report = telemetry.reports[-1]
    assert report.running + report.queued == (1 + len(admits) if running is None else running)
    backend.gate.set()


def fed_to_backend(backend: LoggedTorchBackend, rid: int) -> int:
    """Tokens the backend was given for `rid`: its prompt pieces and one per decode step."""
    prompt = sum(c[2] for c in backend.calls if c[0] in ("prefill", "extend") and c[1] == (rid,))
    return prompt + sum(1 for c in backend.calls if c[0] == "decode" and rid in c[1])


async def test_a_run_that_ends_for_its_time_is_followed_by_the_next_before_its_tokens_go_out(rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bus, backend, tokenizer, device, _ = rig
    monkeypatch.setattr(run_ahead, "BUDGET_MS", 0.0)  # every run ends after its first step, for its time
    queued_at_emit: list[bool] = []
    emit = device._emit

    async def watched(seq, tokens):  # type: ignore[no-untyped-def]
        queued_at_emit.append(not device._thread.idle)
        await emit(seq, tokens)

    monkeypatch.setattr(device, "_emit", watched)
    sender = Collector(bus, FailLoudly(), "test-sender")
    try:
        await sender.send("device", admit(1, 8, max_tokens=6))
        await tokenizer.until(lambda: 1 in tokenizer.ended)
    finally:
        sender.discard()
    assert tokenizer.pieces[1] == [1, 1, 1, 1, 1, 1]
    assert tokenizer.ended[1].completion_tokens == 6 and tokenizer.ended[1].reason == "length"
    # Each run's token went out while the next run was already queued on the device
    # thread; the last run's (the stream ends there) with nothing queued behind it.
    assert queued_at_emit[1:] == [True, True, True, True, False]
    assert [c[0] for c in backend.calls].count("decode") == 5


async def test_a_cancel_while_the_next_run_is_queued_ends_the_stream_after_that_run(rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bus, backend, tokenizer, device, telemetry = rig
    real_run, runs = run_ahead.run, []

    def two_short_runs_then_a_long_one(decode, lanes, interrupt, budget_ms, *rest):  # type: ignore[no-untyped-def]
        runs.append(len(runs))
        return real_run(decode, lanes, interrupt, 0.0 if len(runs) <= 2 else 60_000.0, *rest)

    monkeypatch.setattr(run_ahead, "run", two_short_runs_then_a_long_one)
    real_decode, decodes = backend.decode, []

    def decode(seq_ids, token_ids):  # type: ignore[no-untyped-def]
        decodes.append(len(decodes))
        if len(decodes) == 6:  # the long third run's fourth step holds the device
            backend.hold = "decode"
        return real_decode(seq_ids, token_ids)

    backend.decode = decode  # type: ignore[method-assign]
    released: list[tuple[int, int, int | None]] = []
    release, gone = backend.release, threading.Event()

    def logged_release(seq_id, keep=None):  # type: ignore[no-untyped-def]
        released.append((seq_id, fed_to_backend(backend, seq_id), None if keep is None else len(keep[1])))
        gone.set()
        return release(seq_id, keep)

    backend.release = logged_release  # type: ignore[method-assign]
    sender = Collector(bus, FailLoudly(), "test-sender")
    try:
        await sender.send("device", admit(1, 8, max_tokens=40))
        # The cancel arrives while the third run, queued before the second run's token
        # went out, is held in its fourth step.
        await arrive_while_held(backend, sender, telemetry, [m.CancelRequest(rid=1, reason="cancelled")], running=1)
        await tokenizer.until(lambda: 1 in tokenizer.ended)
        assert await asyncio.get_running_loop().run_in_executor(None, gone.wait, 30)  # queued after the end
    finally:
        sender.discard()
    assert tokenizer.ended[1].reason == "cancelled"
    assert tokenizer.tokens[1] == 3 == tokenizer.ended[1].completion_tokens  # nothing after the cancel went out
    # The stream was released after the run in flight, and the conversation kept of it
    # (where the backend keeps one) is what its KV holds: every token that run fed.
    assert released[0][:2] == (1, 8 + 2 + 4)  # the prompt, a token from each short run, four steps
    assert released[0][2] in (released[0][1], None)
    assert released[0][2] is not None or not device._limits.prefix_cache
