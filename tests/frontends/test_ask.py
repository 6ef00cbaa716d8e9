"""`axchat ask` and `axchat status` as real processes against a real daemon."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import HELD_ARGS, HELD_TOKENS, DaemonProcess, RawClient, ask_streaming, chat, short_socket_dir

from axchat.protocol import v1

SEED_LINE = re.compile(
    r"^Tokenization: [\d.]+(us|ms|s) \| Prefill: [\d.]+(us|ms|s) \| TTFT: [\d.]+s \| Gen: [\d.]+s \| "
    r"Tokens/sec: [\d.]+ \| Tokens: (\d+)$"
)


def axchat(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Bytes, decoded by hand: text mode would turn a generated "\r\n" into "\n".
    proc = subprocess.run(
        [sys.executable, "-m", "axchat", *args],
        input=None if stdin is None else stdin.encode(),
        capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def reference_text(daemon: DaemonProcess, request: v1.Generate) -> str:
    raw = RawClient(daemon.socket)
    try:
        raw.send("ref", request)
        return "".join(b.text for b in raw.stream("ref") if isinstance(b, v1.Delta))
    finally:
        raw.close()


def test_ask_prints_the_streamed_answer(daemon: DaemonProcess) -> None:
    proc = axchat("ask", "--socket", daemon.socket, "--max-tokens", "12", "Tell me a joke")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reference_text(daemon, chat("Tell me a joke", max_tokens=12)) + "\n"


def test_ask_reads_prompt_from_stdin(daemon: DaemonProcess) -> None:
    expected = reference_text(daemon, chat("piped question", max_tokens=8)) + "\n"
    dash = axchat("ask", "--socket", daemon.socket, "--max-tokens", "8", "-", stdin="piped question")
    piped = axchat("ask", "--socket", daemon.socket, "--max-tokens", "8", stdin="piped question")
    assert dash.returncode == 0 and piped.returncode == 0
    assert dash.stdout == expected and piped.stdout == expected


def test_ask_system_prompt_changes_the_conversation(daemon: DaemonProcess) -> None:
    request = v1.Generate(
        messages=[v1.ChatMessage(role="system", content="Be brief."), v1.ChatMessage(role="user", content="Hi")],
        sampling=v1.Sampling(max_tokens=10),
    )
    proc = axchat("ask", "--socket", daemon.socket, "--system", "Be brief.", "--max-tokens", "10", "Hi")
    assert proc.returncode == 0
    assert proc.stdout == reference_text(daemon, request) + "\n"


def test_ask_json_is_ndjson_events(daemon: DaemonProcess) -> None:
    proc = axchat("ask", "--socket", daemon.socket, "--json", "--max-tokens", "6", "--ignore-eos", "Hi")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["type"] for e in events[:-1]] == ["delta"] * (len(events) - 1)
    done = events[-1]
    assert done["type"] == "done" and done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 6
    assert sum(len(e["token_ids"]) for e in events[:-1]) == 6
    assert set(done["stats"]) >= {"tokenize_ms", "prefill_ms", "ttft_ms", "generate_ms", "tokens_per_s", "cpu_percent"}


def test_ask_stats_prints_the_seed_line(daemon: DaemonProcess) -> None:
    proc = axchat("ask", "--socket", daemon.socket, "--stats", "--max-tokens", "5", "--ignore-eos", "Hi")
    assert proc.returncode == 0
    lines = proc.stderr.strip().splitlines()
    match = SEED_LINE.match(lines[0])
    assert match, lines
    assert int(match.group(3)) == 5
    assert lines[1].startswith("CPU %: ") and "Core Temp: " in lines[1]


def test_ask_sampling_flags_reach_the_daemon(daemon: DaemonProcess) -> None:
    args = ["ask", "--socket", daemon.socket, "--temperature", "1.0", "--top-p", "0.9", "--max-tokens", "15", "--ignore-eos"]
    one = axchat(*args, "--seed", "3", "Hi")
    two = axchat(*args, "--seed", "3", "Hi")
    other = axchat(*args, "--seed", "4", "Hi")
    assert one.stdout == two.stdout
    assert one.stdout != other.stdout


def test_ask_json_schema_answers_valid_json(daemon: DaemonProcess, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "c": {"enum": ["x", "y"]}},
              "required": ["n", "c"], "additionalProperties": False}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    proc = axchat("ask", "--socket", daemon.socket, "--json-schema", str(path), "Give me data")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert set(answer) == {"n", "c"} and 0 <= answer["n"] <= 9 and answer["c"] in ("x", "y")
    path.write_text("{broken")
    bad = axchat("ask", "--socket", daemon.socket, "--json-schema", str(path), "Give me data")
    assert bad.returncode == 1 and "--json-schema" in bad.stderr, bad.stderr


def test_ask_reports_daemon_errors(daemon: DaemonProcess) -> None:
    proc = axchat("ask", "--socket", daemon.socket, "--top-p", "7", "Hi")
    assert proc.returncode == 1
    assert "--top-p must be in (0, 1]" in proc.stderr  # the flag the user typed, not the protocol field


def test_ask_without_daemon_says_how_to_start_one() -> None:
    sock = short_socket_dir() / "none.sock"
    proc = axchat("ask", "--socket", str(sock), "Hi")
    assert proc.returncode == 2
    assert "axchat serve" in proc.stderr and str(sock) in proc.stderr
    status = axchat("status", "--socket", str(sock))
    assert status.returncode == 2 and "axchat serve" in status.stderr


def test_ctrl_c_cancels_on_the_daemon(daemon: DaemonProcess) -> None:
    ask = ask_streaming(daemon.socket, *HELD_ARGS, "Hi", timeout_s=30)
    ask.send_signal(signal.SIGINT)
    assert ask.wait(30) == 130
    line = daemon.wait_for_line("finish=cancelled", timeout_s=15)
    assert int(line.split("Tokens: ")[1].split()[0]) < HELD_TOKENS


def test_status_json(daemon: DaemonProcess) -> None:
    proc = axchat("status", "--socket", daemon.socket, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["running"] == 0 and status["queued"] == 0
    assert status["model"] and status["device"] == "cpu" and status["context_length"] == 8192
    assert status["uptime_s"] > 0 and status["state"] == "serving"
    human = axchat("status", "--socket", daemon.socket)
    assert human.returncode == 0 and "context:  8192 tokens" in human.stdout
    assert status["loaded"] is True and status["unloads_at"] is None  # no keep-alive: for ever
    assert "memory:   model loaded\n" in human.stdout


def test_ask_imports_no_torch_transformers_or_numpy() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "axchat.frontends.ask", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "axchat ask" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "zmq" in imported and "msgspec" in imported  # the check sees real imports
    assert not imported & {"torch", "transformers", "numpy", "tokenizers"}
