"""A daemon whose engine crashes is named as such, in words, by whoever started it
(`make run`, `ask`, `chat`), with `axchat doctor` pointed at; the doctor then fails each
weight type by its signal. The crash is a real SIGSEGV in a real daemon's first forward
pass (crashing_engine/sitecustomize.py); llama.cpp is otherwise the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import short_socket_dir

CRASHING = str(Path(__file__).resolve().parent / "crashing_engine")
CRASH_LINE = "crashed: segmentation fault (SIGSEGV) in the engine while loading the model"


def crash_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXCHAT_")}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": CRASHING, "AXCHAT_TEST_ENGINE_CRASH": "1", **more}


def test_make_run_names_the_signal_and_the_doctor(tiny_model_dir: Path, tmp_path: Path) -> None:
    sock, log = short_socket_dir() / "axchat.sock", tmp_path / "daemon.log"
    done = subprocess.run(
        [sys.executable, "-m", "axchat.devrun", "start", "--socket", str(sock), "--log", str(log), "--model", str(tiny_model_dir)],
        env=crash_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"the daemon {CRASH_LINE}" in done.stderr, done.stderr
    assert done.stderr.rstrip().splitlines()[-1].endswith("doctor` tests the engine on this machine and prints what to report")
    # The daemon's own log says where: its Python stack at the fault, in the warm-up pass.
    assert "Segmentation fault" in log.read_text() and "load_device" in log.read_text()


def test_an_autostarting_ask_names_the_signal_and_the_doctor(tiny_model_dir: Path, tmp_path: Path) -> None:
    sock = short_socket_dir() / "axchat.sock"
    env = crash_env(AXCHAT_SOCKET=str(sock), AXCHAT_MODEL=str(tiny_model_dir), XDG_STATE_HOME=str(tmp_path / "state"))
    done = subprocess.run([sys.executable, "-m", "axchat", "ask", "Hello"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"the daemon it started {CRASH_LINE}" in done.stderr and "doctor` tests the engine" in done.stderr, done.stderr


def test_the_doctor_fails_each_crashing_type_by_its_signal(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "axchat", "doctor", "--json", "--socket", str(tmp_path / "none.sock")],
        env=crash_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["passed"] is False
    for result in report["weight_types"]:
        assert result["crashed"] and "segmentation fault (SIGSEGV)" in result["detail"], result
