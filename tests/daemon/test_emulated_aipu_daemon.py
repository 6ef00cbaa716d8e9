"""`axchat serve --device aipu` over the emulated Metis card, as a real subprocess:
the same answers as torch where int8 logits keep the argmax, one request on the card
at a time served fairly, the card held exclusively, history trimmed to the static
context with the SDK's reply reserve; a catalog model from an emulated SDK build tree
with its tokenizer offline, on the second card when the first is busy, stopping on
Phi-3's `<|end|>`."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HELD, DaemonProcess, RawClient, chat

from axchat.actors.backends.aipu import emulator as emu
from axchat.actors.backends.aipu.backend import AipuBackend
from axchat.actors.backends.load_options import LoadOptions
from axchat.actors.tokenizer import load_tokenizer
from axchat.models.aipu_catalog import CATALOG
from axchat.protocol import v1

TOPICS = [
    "rain", "bread", "computers", "the sea", "music", "trees", "stars", "trains", "cats", "the moon",
    "coffee", "rivers", "winter", "books", "bicycles", "mountains", "clocks", "gardens", "bridges", "the wind",
]  # fmt: skip
AGREEING_PROMPT = "Tell me about bread."  # int8 keeps every argmax of its first 16 tokens
N_TOKENS = 16


def emulated_card_env(tmp: Path) -> dict[str, str]:
    return {"AXCHAT_AIPU_EMULATOR_DIR": str(tmp / "card"), "XDG_CACHE_HOME": str(tmp / "cache")}


def aipu_daemon(model: Path, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> DaemonProcess:
    env = {**emulated_card_env(tmp), **(env or {})}
    return DaemonProcess(model, "--device", "aipu", "--aipu-runtime", "emulator", *extra, env=env)


@pytest.fixture(scope="module")
def card_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulated-card")


@pytest.fixture(scope="module")
def emulated(tiny_model_dir: Path, card_tmp: Path) -> Iterator[DaemonProcess]:
    d = aipu_daemon(tiny_model_dir, card_tmp).wait_ready()
    yield d
    assert d.stop() == 0, d.log_text()


def greedy_ids(client: RawClient, rid: str, prompt: str) -> list[int]:
    client.send(rid, chat(prompt, max_tokens=N_TOKENS, ignore_eos=True))
    ids: list[int] = []
    for body in client.stream(rid):
        if isinstance(body, v1.Delta):
            ids.extend(body.token_ids)
        elif isinstance(body, v1.Done):
            assert body.finish_reason == "length", body
    return ids


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_emulated_aipu_greedy_answer_equals_torch_where_int8_keeps_the_argmax(
    emulated: DaemonProcess, daemon_f32: DaemonProcess
) -> None:
    """Measured on the tiny random model (flat logits, so near-ties are common): over
    these 20 prompts 19 first tokens and 9 whole 16-token answers agree; per decode
    step about 96% (244 of 255 steps up to the first difference) keep the argmax. A
    difference is always a near-tie that the int8 quantization (and fp16 embeddings)
    turned; after it the two answers go their own ways."""
    # The float32 reference (f32 weights, computing what transformers computes).
    aipu, torch = RawClient(emulated.socket), RawClient(daemon_f32.socket)
    try:
        assert greedy_ids(aipu, "agree", AGREEING_PROMPT) == greedy_ids(torch, "agree", AGREEING_PROMPT)
        first = whole = 0
        for i, topic in enumerate(TOPICS):
            prompt = f"Tell me about {topic}."
            a, t = greedy_ids(aipu, f"a{i}", prompt), greedy_ids(torch, f"t{i}", prompt)
            assert len(a) == len(t) == N_TOKENS
            same = common_prefix(a, t)
            first += same > 0
            whole += same == N_TOKENS
        assert first >= 17 and whole >= 6, (first, whole)
        status = aipu.request(v1.Status())
        assert isinstance(status, v1.StatusReply)
        assert (status.backend, status.dtype, status.context_length) == ("aipu", "int8", 1024)
        assert "emulated" in status.device
    finally:
        aipu.close()
        torch.close()


def test_emulated_aipu_serves_one_request_at_a_time_fairly(emulated: DaemonProcess) -> None:
    a, b = RawClient(emulated.socket), RawClient(emulated.socket)
    try:
        a.send("a1", chat("hog the card", **HELD))
        assert isinstance(a.recv(want="a1")[1], v1.Delta)  # a1 holds the card
        a.send("a2", chat("second of a", max_tokens=2, ignore_eos=True))
        assert a.recv(want="a2")[1] == v1.Queued(position=1)
        a.send("a3", chat("third of a", max_tokens=2, ignore_eos=True))
        assert a.recv(want="a3")[1] == v1.Queued(position=2)
        b.send("b1", chat("b wants a turn", max_tokens=2, ignore_eos=True))
        assert b.recv(want="b1")[1] == v1.Queued(position=2)  # round robin: before a3
        status = b.request(v1.Status())
        assert isinstance(status, v1.StatusReply)
        assert (status.max_running, status.running, status.queued, status.kv_sequences) == (1, 1, 3, 1)
        a.send("a1", v1.Cancel())
        for client, rid in ((a, "a1"), (a, "a2"), (b, "b1"), (a, "a3")):
            assert isinstance(list(client.stream(rid))[-1], v1.Done)
    finally:
        a.close()
        b.close()
    # Each request's log line is written after its `done` went out: wait for the last.
    emulated.wait_for_line("request a3@")
    finished = [line.split("request ")[1].split("@")[0] for line in emulated.lines if "finish=" in line]
    assert finished[-4:] == ["a1", "a2", "b1", "a3"]


def test_emulated_aipu_second_daemon_on_the_same_card_fails(
    emulated: DaemonProcess, tiny_model_dir: Path, card_tmp: Path
) -> None:
    second = aipu_daemon(tiny_model_dir, card_tmp)
    code = second.proc.wait(timeout=90)
    second.stop()
    assert code == 1
    assert "metis-0:1:0 is in use by another process" in second.log_text()


def fake_triton_trace(directory: Path) -> dict[str, str]:
    """A `triton_trace` on PATH (no card here): level changes succeed silently; the log
    stream prints one collector line in the tool's format and ends, so it is run again."""
    directory.mkdir()
    tool = directory / "triton_trace"
    tool.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--slog-level*) exit 0;; esac\n'
        'echo "[04:58:54.012,603] <inf> collector: core_temps=[51,57,49,50,48]"\n'
    )
    tool.chmod(0o755)
    return {"PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def test_emulated_aipu_trims_history_to_the_static_context(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = aipu_daemon(tiny_model_dir, tmp_path, "--context", "256", env=fake_triton_trace(tmp_path / "bin")).wait_ready()
    client = RawClient(d.socket)
    try:
        # The hottest core from triton_trace wins over the host's sensors.
        deadline = time.monotonic() + 15
        while True:
            status = client.request(v1.Status())
            assert isinstance(status, v1.StatusReply)
            if status.device_temp_c is not None and status.device_temp_c == 57.0:
                break
            assert time.monotonic() < deadline, status.device_temp_c
            client.sock.poll(200)  # a bounded pause between polls (nothing arrives on it)
        history = [v1.ChatMessage(role="system", content="You are terse.")]
        for i in range(12):
            history.append(v1.ChatMessage(role="user", content=f"question {i} " + "about weather " * 4))
            history.append(v1.ChatMessage(role="assistant", content=f"answer {i} " + "it rains " * 4))
        history.append(v1.ChatMessage(role="user", content="and the last question?"))
        client.send("t", v1.Generate(messages=history, sampling=v1.Sampling(max_tokens=200, ignore_eos=True)))
        frames = list(client.stream("t"))
        done = frames[-1]
        assert isinstance(done, v1.Done), done
        assert done.trimmed_messages > 0 and done.trimmed_messages % 2 == 0
        # The SDK's reserve at a context of 512 or less is 64 tokens, whatever max_tokens asks.
        assert done.usage.prompt_tokens <= 256 - 64
        assert done.usage.completion_tokens > 0 and done.finish_reason == "length" and done.error is None
        assert done.usage.prompt_tokens + done.usage.completion_tokens <= 256
    finally:
        client.close()
        assert d.stop() == 0, d.log_text()


PHI3 = "phi3-mini-1024-4core-static"
END_PROMPT = "Tell me about rivers."


def phi3_style_build(tiny_model_dir: Path, root: Path, env: dict[str, str]) -> None:
    """An emulated build of PHI3 from a copy of the tiny model, with Phi-3's end of turn:
    the tokenizer's `<|pad|>` (id 3) renamed `<|end|>`, and the model's output row 3 made
    a copy of the row of the token it answers END_PROMPT with, so that `<|end|>` ties
    with that token and, the lower id, wins the argmax: the reply ends at once."""
    from safetensors.numpy import load_file, save_file

    model = root / "phi3-like-model"
    shutil.copytree(tiny_model_dir, model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = model / name
        path.write_text(path.read_text().replace('"<|pad|>"', '"<|end|>"'))
    tokenizer = load_tokenizer(str(model))
    assert tokenizer.token_id("<|end|>") == 3 != tokenizer.eos_token_id
    text = tokenizer.render_chat([{"role": "user", "content": END_PROMPT}], add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        backend = AipuBackend.load(str(model), LoadOptions(aipu_runtime="emulator", context=64))
        try:
            first = int(backend.prefill(1, ids).argmax())
        finally:
            backend.close()
    assert first > 3, first
    weights = load_file(model / "model.safetensors")
    weights["lm_head.weight"][3] = weights["lm_head.weight"][first]
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    emu.write_build_tree(root / "build", PHI3, model, context=1024, tokenizer_dir_name=CATALOG[PHI3].tokenizer_dir_name)


@pytest.fixture(scope="module")
def phi3_on_second_card(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """PHI3 served from its build tree on two emulated cards, the first held by another
    connection: the daemon must take the second."""
    tmp = tmp_path_factory.mktemp("phi3-build")
    env = {**emulated_card_env(tmp), emu.CARDS_ENV: "metis-0:1:0=16,metis-0:3:0=16"}
    phi3_style_build(tiny_model_dir, tmp, env)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(emu.LOCK_DIR_ENV, env[emu.LOCK_DIR_ENV])
        other = emu.Context(cards=env[emu.CARDS_ENV])
        held = other.device_connect(other.list_devices()[0], num_sub_devices=1)
    try:
        d = DaemonProcess(
            PHI3, "--device", "aipu", "--aipu-runtime", "emulator", "--build-root", str(tmp / "build"), env=env
        ).wait_ready()
        yield d
        assert d.stop() == 0, d.log_text()
    finally:
        held.release()


def test_emulated_aipu_catalog_model_offline_on_the_second_card(phi3_on_second_card: DaemonProcess) -> None:
    client = RawClient(phi3_on_second_card.socket)
    try:
        status = client.request(v1.Status())
        assert isinstance(status, v1.StatusReply)
        assert (status.model, status.device, status.context_length) == (PHI3, "metis-0:3:0 (emulated)", 1024)
    finally:
        client.close()
    log = phi3_on_second_card.log_text()
    assert "using metis-0:3:0 (metis-0:1:0 busy)" in log
    # The tokenizer came from the build tree (the hub is offline here).
    assert re.search(rf"tokenizer \S+/build/tokenizers/{CATALOG[PHI3].tokenizer_dir_name}\)", log)


def test_emulated_aipu_phi3_end_of_turn_stops_the_reply(phi3_on_second_card: DaemonProcess) -> None:
    client = RawClient(phi3_on_second_card.socket)
    try:
        for rid, ignore_eos, want in (("end", False, "stop"), ("on", True, "length")):
            client.send(rid, chat(END_PROMPT, max_tokens=8, ignore_eos=ignore_eos))
            done = list(client.stream(rid))[-1]
            assert isinstance(done, v1.Done), done
            assert done.finish_reason == want, done
            assert done.usage.completion_tokens == (0 if want == "stop" else 8), done  # the end id is not counted
    finally:
        client.close()
