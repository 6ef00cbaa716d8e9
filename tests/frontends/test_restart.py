"""A daemon that dies mid-request: its client hears `daemon_restarted`, and `ask` and
`chat` retry once when nothing of the answer had been shown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import HELD_ARGS, DaemonProcess, ask_streaming, chat, short_socket_dir, start_problem_daemon
from test_ask import axchat, reference_text


def test_kill_9_mid_stream_then_restart(tiny_model_dir: Path) -> None:
    first = DaemonProcess(tiny_model_dir).wait_ready()
    ask = ask_streaming(first.socket, *HELD_ARGS, "Hi")
    try:
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert ask.wait(30) == 1
        assert ask.stderr is not None
        stderr = ask.stderr.read().decode()
        assert "daemon_restarted" in stderr and "retrying" not in stderr  # part of the answer was shown
    finally:
        if ask.poll() is None:
            ask.kill()
            ask.wait()
    second = DaemonProcess(tiny_model_dir, socket=first.socket).wait_ready()
    try:
        proc = axchat("ask", "--socket", second.socket, "--max-tokens", "8", "Hello again")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == reference_text(second, chat("Hello again", max_tokens=8)) + "\n"
    finally:
        assert second.stop() == 0


def test_ask_retries_once_when_nothing_was_shown(tiny_model_dir: Path) -> None:
    sock = str(short_socket_dir() / "d.sock")
    problem = start_problem_daemon(sock)
    ask = subprocess.Popen(
        [sys.executable, "-m", "axchat", "ask", "--socket", sock, "--max-tokens", "8", "Try twice"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert problem.wait(60) == 3  # it died holding the request
        real = DaemonProcess(tiny_model_dir, socket=sock).wait_ready()
        try:
            out, err = ask.communicate(timeout=120)
            assert ask.returncode == 0, err.decode()
            assert "daemon_restarted" in err.decode() and "retrying once" in err.decode()
            assert out.decode() == reference_text(real, chat("Try twice", max_tokens=8)) + "\n"
        finally:
            assert real.stop() == 0
    finally:
        if ask.poll() is None:
            ask.kill()
            ask.wait()


def test_plain_chat_retries_once_when_nothing_was_shown(tiny_model_dir: Path, tmp_path: Path) -> None:
    sock = str(short_socket_dir() / "d.sock")
    problem = start_problem_daemon(sock)
    chat_proc = subprocess.Popen(
        [sys.executable, "-m", "axchat", "chat", "--plain", "--socket", sock, "--max-tokens", "8"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")},
    )
    assert chat_proc.stdin is not None
    chat_proc.stdin.write(b"Try twice\n")
    chat_proc.stdin.close()
    try:
        assert problem.wait(60) == 3  # it died holding the request
        real = DaemonProcess(tiny_model_dir, socket=sock).wait_ready()
        try:
            assert chat_proc.wait(120) == 0
            assert chat_proc.stdout is not None and chat_proc.stderr is not None
            out, err = chat_proc.stdout.read().decode(), chat_proc.stderr.read().decode()
            assert "daemon_restarted" in err and "retrying once" in err, err
            expected = reference_text(real, chat("Try twice", max_tokens=8))
            assert out == f"User: Try twice\nAssistant: {expected}\nUser: \n", out
        finally:
            assert real.stop() == 0
    finally:
        if chat_proc.poll() is None:
            chat_proc.kill()
            chat_proc.wait()
