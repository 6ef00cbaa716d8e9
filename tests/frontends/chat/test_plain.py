"""`axchat chat --plain` as a real process with piped stdin, against a real daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import HELD_ARGS, HELD_TOKENS, DaemonProcess, RawClient, short_socket_dir

from axchat.protocol import v1


def reference(daemon: DaemonProcess, messages: list[v1.ChatMessage], max_tokens: int) -> str:
    raw = RawClient(daemon.socket)
    try:
        raw.send("ref", v1.Generate(messages=messages, sampling=v1.Sampling(max_tokens=max_tokens)))
        return "".join(e.text for e in raw.stream("ref") if isinstance(e, v1.Delta))
    finally:
        raw.close()


def chat_process(tmp_path: Path, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    # No --plain: stdout is a pipe, so the line chat is chosen by itself.
    proc = subprocess.run(
        [sys.executable, "-m", "axchat", "chat", *args],
        input=stdin.encode(),
        capture_output=True,
        timeout=120,
        env=env,
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_two_turns_with_memory_then_clear(daemon: DaemonProcess, tmp_path: Path) -> None:
    u = lambda text: v1.ChatMessage(role="user", content=text)  # noqa: E731
    first = reference(daemon, [u("Hello")], 10)
    second = reference(daemon, [u("Hello"), v1.ChatMessage(role="assistant", content=first), u("And then?")], 10)
    proc = chat_process(
        tmp_path, "--socket", daemon.socket, "--max-tokens", "10", stdin="Hello\nAnd then?\n/clear\nHello\nquit\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"User: Hello\nAssistant: {first}\n"
        f"User: And then?\nAssistant: {second}\n"
        "User: /clear\n(new conversation)\n"
        f"User: Hello\nAssistant: {first}\n"  # the same answer: the memory really was cleared
        "User: quit\n"
    )
    saved = sorted((tmp_path / "data" / "axchat" / "conversations").glob("*.json"))
    assert len(saved) == 2  # the one before `clear` and the one after


def test_resume_and_eof(daemon: DaemonProcess, tmp_path: Path) -> None:
    u = lambda text: v1.ChatMessage(role="user", content=text)  # noqa: E731
    first = reference(daemon, [u("Hi")], 6)
    second = reference(daemon, [u("Hi"), v1.ChatMessage(role="assistant", content=first), u("Again")], 6)
    one = chat_process(tmp_path, "--plain", "--socket", daemon.socket, "--max-tokens", "6", stdin="Hi\n")
    assert one.returncode == 0 and one.stdout == f"User: Hi\nAssistant: {first}\nUser: \n"
    two = chat_process(tmp_path, "--plain", "--resume", "--socket", daemon.socket, "--max-tokens", "6", stdin="Again")
    assert two.returncode == 0, two.stderr
    assert "resumed a conversation of 2 turns" in two.stderr
    assert two.stdout == f"User: Again\nAssistant: {second}\nUser: \n"


def test_no_daemon(tmp_path: Path) -> None:
    sock = short_socket_dir() / "none.sock"
    proc = chat_process(tmp_path, "--socket", str(sock), "--no-autostart", stdin="Hi\n")
    assert proc.returncode == 2 and "axchat serve" in proc.stderr and str(sock) in proc.stderr


def test_the_tui_command_set_works_in_plain_mode_and_never_reaches_the_model(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """/help, /system, /temperature, /save, /stats, a rejected and an unknown command,
    then /exit: only the one real prompt is sent, with the system prompt set."""
    transcript = tmp_path / "chat.md"
    script = [
        "/help",
        "/system Be brief.",
        "/temperature abc",
        "/bogus",
        "/stats",
        "Hi",
        f"/save {transcript}",
        "/exit",
        "Never sent",
    ]
    proc = chat_process(tmp_path, "--max-tokens", "4", "--socket", daemon.socket, stdin="\n".join(script) + "\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "/temperature T" in out and "/quit" in out  # the help list
    assert "(system prompt set)" in out and "(/temperature needs a number" in out and "(unknown command /bogus" in out
    assert out.count("Assistant: ") == 1 and "Never sent" not in out
    assert "Tokenization: " in proc.stderr and "CPU %: " in proc.stderr  # /stats turned the lines on
    saved = transcript.read_text()
    assert "**System:**\n\nBe brief." in saved and "**User:**\n\nHi" in saved and "/bogus" not in saved


def test_ctrl_c_cancels_the_answer_then_quits_at_the_prompt(daemon: DaemonProcess, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "axchat", "chat", "--socket", daemon.socket, *HELD_ARGS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    log_start = len(daemon.lines)
    proc.stdin.write(b"Go on\n")
    proc.stdin.flush()
    seen = bytearray()
    answering = threading.Event()
    stopped = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
            seen.extend(chunk)
            if b"Assistant: " in seen and not seen.endswith(b"Assistant: "):
                answering.set()
            if b" [stopped]\nUser: " in seen:
                stopped.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert answering.wait(30), seen
    proc.send_signal(signal.SIGINT)
    assert stopped.wait(30), seen
    line = daemon.wait_for_line("finish=cancelled", timeout_s=15)
    while line not in daemon.lines[log_start:]:  # an earlier test's cancel, still queued
        line = daemon.wait_for_line("finish=cancelled", timeout_s=15)
    assert int(line.split("Tokens: ")[1].split()[0]) < HELD_TOKENS
    proc.send_signal(signal.SIGINT)  # at the prompt: leaves
    assert proc.wait(30) == 0
    reader.join(5)


def test_chat_imports_no_torch_transformers_or_numpy() -> None:
    # The package itself (what `axchat chat` loads first) and each mode it may pick.
    for module in ("axchat.frontends.chat.app", "axchat.frontends.chat.plain"):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
        assert "zmq" in imported and "msgspec" in imported  # the check sees real imports
        assert not imported & {"torch", "transformers", "numpy", "tokenizers"}, module
    help_text = subprocess.run(
        [sys.executable, "-m", "axchat", "chat", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0 and "--resume" in help_text.stdout and "--plain" in help_text.stdout
