"""`make run`'s helper: reuse a daemon serving the model asked for, restart one serving
another (saying so), and refuse a model that does not exist before stopping anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import short_socket_dir

from axchat.client import Client


def devrun(sock: Path, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXCHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "axchat.devrun", "start", "--socket", str(sock), "--log", str(log), *args],
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def serving(sock: Path) -> str:
    with Client(str(sock)) as client:
        return client.hello().model


def test_make_run_with_another_model_says_so_and_restarts(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    sock, log = short_socket_dir() / "axchat.sock", tmp_path / "daemon.log"
    try:
        first = devrun(sock, log, "--model", str(tiny_model_dir))
        assert first.returncode == 0 and "daemon ready" in first.stderr, first.stderr
        again = devrun(sock, log, "--model", str(tiny_model_dir))
        assert again.returncode == 0 and "already serving" in again.stderr and "starting" not in again.stderr
        typo = devrun(sock, log, "--model", "nosuchmodel")
        assert typo.returncode == 1 and "unknown model 'nosuchmodel'" in typo.stderr
        assert serving(sock) == "tiny"  # the typo stopped nothing
        switch = devrun(sock, log, "--model", str(other))
        assert switch.returncode == 0, switch.stderr
        assert f"serves tiny, not {other}: restarting it" in switch.stderr  # a directory shows as its name
        assert serving(sock) == "other-model"
    finally:
        subprocess.run([sys.executable, "-m", "axchat", "stop", "--socket", str(sock)], capture_output=True, timeout=60)


def test_a_failed_start_shows_only_its_own_log_lines(tmp_path: Path) -> None:
    sock, log = short_socket_dir() / "axchat.sock", tmp_path / "daemon.log"
    log.write_text("INFO axchat.requests: request 1 of an earlier daemon\npartial line of an earl")
    proc = devrun(sock, log, "--model", str(tmp_path / "missing"))
    assert proc.returncode == 1
    assert "earlier daemon" not in proc.stderr and "partial line" not in proc.stderr, proc.stderr
    assert "missing does not exist" in proc.stderr, proc.stderr
