"""Generation through a real daemon subprocess: correctness, streaming, seeds, cancel."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HELD, HELD_ARGS, HELD_TOKENS, DaemonProcess, RawClient, chat

from axchat.protocol import v1


def collect(raw: RawClient, rid: str, request: v1.Generate) -> tuple[list[v1.Delta], v1.DaemonMessage]:
    raw.send(rid, request)
    deltas: list[v1.Delta] = []
    for body in raw.stream(rid):
        if isinstance(body, v1.Delta):
            deltas.append(body)
        else:
            return deltas, body
    raise AssertionError("stream ended without a terminal frame")


def wait_until_idle(raw: RawClient, timeout_s: float = 15.0) -> v1.StatusReply:
    """Poll status (each poll a real round trip) until nothing runs and no KV is held."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = raw.request(v1.Status())
        assert isinstance(status, v1.StatusReply)
        if status.running == 0 and status.queued == 0 and status.kv_sequences == 0:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"daemon still busy: {status}")


@pytest.mark.parametrize(
    "prompt",
    ["Tell me a joke about the weather.", "héllo 日本 🙂 what is a computer?", "x"],
)
def test_greedy_matches_model_generate(raw_f32: RawClient, tiny_model_dir: Path, prompt: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected = model.generate(ids, do_sample=False, max_new_tokens=40)[0, ids.shape[1] :].tolist()
    if expected and expected[-1] == tok.eos_token_id:
        expected = expected[:-1]  # the daemon ends on EOS without emitting it

    deltas, done = collect(raw_f32, "g", chat(prompt, max_tokens=40))
    assert isinstance(done, v1.Done), done
    got = [t for d in deltas for t in d.token_ids]
    assert got == expected
    assert done.usage.completion_tokens == len(expected)
    assert done.usage.prompt_tokens == ids.shape[1]
    assert "".join(d.text for d in deltas) == tok.decode(expected, skip_special_tokens=True)


def test_first_delta_arrives_while_generation_still_runs(raw: RawClient) -> None:
    raw.send("s", chat("stream please", **HELD))
    env, first = raw.recv()
    assert env.id == "s" and isinstance(first, v1.Delta)
    # The daemon still reports the request as running after we hold its first text:
    # the text was sent as it was made, not buffered until the end.
    status = raw.request(v1.Status())
    assert isinstance(status, v1.StatusReply) and status.running == 1
    raw.send("s", v1.Cancel())
    *_, done = list(raw.stream("s"))
    assert isinstance(done, v1.Done) and done.finish_reason == "cancelled"
    assert done.usage.completion_tokens < HELD_TOKENS


def test_same_seed_same_text_other_seed_differs(raw: RawClient) -> None:
    def sample(seed: int, rid: str) -> list[int]:
        deltas, done = collect(raw, rid, chat("Give me a quote", temperature=1.0, seed=seed, max_tokens=30, ignore_eos=True))
        assert isinstance(done, v1.Done) and done.usage.completion_tokens == 30
        return [t for d in deltas for t in d.token_ids]

    first, again, other = sample(7, "a"), sample(7, "b"), sample(8, "c")
    assert first == again
    assert first != other


def test_cancel_stops_within_a_step_and_frees_kv(raw: RawClient, daemon: DaemonProcess) -> None:
    raw.send("c", chat("long answer", **HELD))
    received = 0
    for body in raw.stream("c"):
        assert isinstance(body, v1.Delta)
        received += len(body.token_ids)
        if received >= 3:
            break
    raw.send("c", v1.Cancel())
    tail = list(raw.stream("c"))
    done = tail[-1]
    assert isinstance(done, v1.Done) and done.finish_reason == "cancelled"
    # Only tokens already in flight when the cancel landed may follow it.
    in_flight = sum(len(b.token_ids) for b in tail if isinstance(b, v1.Delta))
    assert done.usage.completion_tokens <= received + in_flight + 1
    assert done.usage.completion_tokens < HELD_TOKENS
    wait_until_idle(raw)
    _deltas, after = collect(raw, "next", chat("still there?", max_tokens=5))
    assert isinstance(after, v1.Done) and after.usage.completion_tokens > 0


def test_client_killed_mid_stream_is_cancelled(raw: RawClient, daemon: DaemonProcess) -> None:
    ask = subprocess.Popen(
        [sys.executable, "-m", "axchat", "ask", "--socket", daemon.socket, *HELD_ARGS, "hi"],
        stdout=subprocess.PIPE,
    )
    got_output = threading.Event()

    def first_bytes() -> None:
        assert ask.stdout is not None
        if ask.stdout.read(1):
            got_output.set()

    threading.Thread(target=first_bytes, daemon=True).start()
    assert got_output.wait(30), "ask printed nothing"
    ask.kill()
    ask.wait(10)
    daemon.wait_for_line("cancelling 1 request", timeout_s=15)
    line = daemon.wait_for_line("finish=cancelled", timeout_s=15)
    tokens = int(line.split("Tokens: ")[1].split()[0])
    assert tokens < HELD_TOKENS
    wait_until_idle(raw)
    _, done = collect(raw, "after-kill", chat("anyone?", max_tokens=3))
    assert isinstance(done, v1.Done)


def test_status_answers_fast_during_a_long_generation(raw: RawClient, daemon: DaemonProcess) -> None:
    busy = RawClient(daemon.socket)
    try:
        busy.send("busy", chat("a very long story", **HELD))
        _env, first = busy.recv()
        assert isinstance(first, v1.Delta)
        latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            status = raw.request(v1.Status())
            latencies.append(time.perf_counter() - t0)
            assert isinstance(status, v1.StatusReply) and status.running == 1
        assert max(latencies) < 0.100, latencies
        busy.send("busy", v1.Cancel())
        assert isinstance(list(busy.stream("busy"))[-1], v1.Done)
    finally:
        busy.close()
    wait_until_idle(raw)


def test_concurrent_requests_from_two_clients_both_complete(raw: RawClient, daemon: DaemonProcess) -> None:
    other = RawClient(daemon.socket)
    try:
        raw.send("one", chat("first", max_tokens=20, ignore_eos=True))
        other.send("two", chat("second", max_tokens=20, ignore_eos=True))
        done_one = list(raw.stream("one"))[-1]
        done_two = list(other.stream("two"))[-1]
        assert isinstance(done_one, v1.Done) and done_one.usage.completion_tokens == 20
        assert isinstance(done_two, v1.Done) and done_two.usage.completion_tokens == 20
    finally:
        other.close()


def test_stop_string_is_trimmed(raw: RawClient, tiny_model_dir: Path) -> None:
    # Find what greedy decoding says, then stop on a piece from its middle.
    deltas, done = collect(raw, "probe", chat("stop test", max_tokens=30, ignore_eos=True))
    full = "".join(d.text for d in deltas)
    stop = full[10:13]
    assert len(stop) == 3 and stop in full
    deltas, done = collect(raw, "stopped", chat("stop test", max_tokens=30, ignore_eos=True, stop=[stop]))
    text = "".join(d.text for d in deltas)
    assert isinstance(done, v1.Done) and done.finish_reason == "stop"
    assert text == full[: full.index(stop)]
    # Tokens made after the stop string (a run of greedy steps makes several at once)
    # are neither shown nor counted.
    assert done.usage.completion_tokens == sum(len(d.token_ids) for d in deltas) < 30


def test_raw_prompt_without_template(raw: RawClient) -> None:
    raw.send("p", v1.Generate(prompt="Once upon a time", sampling=v1.Sampling(max_tokens=5, ignore_eos=True)))
    frames = list(raw.stream("p"))
    done = frames[-1]
    assert isinstance(done, v1.Done) and done.usage.completion_tokens == 5
    assert done.stats.prefill_ms > 0 and done.stats.ttft_ms >= done.stats.prefill_ms
    assert done.stats.tokens_per_s > 0 and done.stats.generate_ms > 0


def test_status_reports_the_decode_path_and_its_timings(raw: RawClient) -> None:
    _deltas, done = collect(raw, "timed", chat("time me", max_tokens=24, ignore_eos=True))
    assert isinstance(done, v1.Done) and done.usage.completion_tokens == 24
    status = wait_until_idle(raw)
    # The tiny model is Llama-shaped: on the CPU a flag-less daemon runs it on llama.cpp
    # with q8_0 weights, and says so with what it measured.
    assert (status.backend, status.decode_path, status.dtype) == ("llamacpp", "llama.cpp", "q8_0")
    assert "weights q8_0" in status.dtype_reason
    assert not status.compiled and status.compile_s == 0.0
    assert status.threads >= 1
    # 23 decode steps back to back ran: both halves of a token's time were measured.
    assert status.step_ms > 0 and status.overhead_ms_per_token > 0
