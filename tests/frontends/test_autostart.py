"""Autostart: `axchat ask` with no daemon starts one, once, however many ask at once;
`axchat stop` ends it."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

from conftest import short_socket_dir


def wait_exit(pid: int, timeout_s: float) -> bool:
    """True once `pid` has exited; it is not our child, so no waitpid."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(fd)


def autostart_env(tiny_model_dir: Path, sock: Path, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AXCHAT_NO_AUTOSTART"}
    return {**env, "AXCHAT_SOCKET": str(sock), "AXCHAT_MODEL": str(tiny_model_dir), "XDG_STATE_HOME": str(state)}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "axchat", *args], env=env, capture_output=True, text=True, timeout=180)


def test_two_asks_at_once_start_exactly_one_daemon(tiny_model_dir: Path, tmp_path: Path) -> None:
    sock = short_socket_dir() / "run" / "axchat.sock"  # not even its directory exists yet
    env = autostart_env(tiny_model_dir, sock, tmp_path / "state")
    cmd = [sys.executable, "-m", "axchat", "ask", "--max-tokens", "8", "Hello there"]
    asks = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [a.communicate(timeout=180) for a in asks]
    log = tmp_path / "state" / "axchat" / "daemon.log"
    try:
        for a, (_out, err) in zip(asks, results, strict=True):
            assert a.returncode == 0, err + "\n" + (log.read_text() if log.exists() else "")
        assert results[0][0] == results[1][0] and results[0][0].strip()
        starters = [err for _, err in results if "starting one" in err]
        assert len(starters) == 1, results
        assert "daemon ready after" in starters[0]
        text = log.read_text()
        assert text.count("ready: serving") == 1 and "already serving" not in text, text
        status = run(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        pid = json.loads(status.stdout)["pid"]
        assert "keep-alive 300s" in text  # a daemon nobody installed lets its model go when idle
    finally:
        stop = run(env, "stop")
    assert stop.returncode == 0, stop.stderr
    assert wait_exit(pid, 5) and not sock.exists()
    assert "stopped" in log.read_text().splitlines()[-1]
    assert run(env, "stop").returncode == 2  # nothing left to stop


def test_no_autostart_flag_and_variable(tiny_model_dir: Path, tmp_path: Path) -> None:
    sock = short_socket_dir() / "axchat.sock"
    env = autostart_env(tiny_model_dir, sock, tmp_path / "state")
    flag = run(env, "ask", "--no-autostart", "Hi")
    assert flag.returncode == 2 and "axchat serve" in flag.stderr
    variable = run({**env, "AXCHAT_NO_AUTOSTART": "1"}, "ask", "Hi")
    assert variable.returncode == 2 and "axchat serve" in variable.stderr
    assert not (tmp_path / "state" / "axchat" / "daemon.log").exists()


def test_autostart_reports_a_daemon_that_cannot_start(tmp_path: Path) -> None:
    sock = short_socket_dir() / "axchat.sock"
    env = {**autostart_env(Path("/nonexistent/model"), sock, tmp_path / "state")}
    proc = run(env, "ask", "Hi")
    assert proc.returncode == 2
    assert "exited with code 1" in proc.stderr and "/nonexistent/model does not exist" in proc.stderr


def test_chat_starts_a_daemon_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`axchat chat` (here the line chat, stdout being a pipe) autostarts as `ask` does."""
    sock = short_socket_dir() / "axchat.sock"
    env = {**autostart_env(tiny_model_dir, sock, tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "axchat", "chat", "--max-tokens", "4"],
            input="Hello\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        assert "starting one" in proc.stderr and "daemon ready after" in proc.stderr
        assert proc.stdout.startswith("User: Hello\nAssistant: ")
    finally:
        run(env, "stop")
