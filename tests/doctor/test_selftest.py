"""The engine self-test: a crashing child is named by its signal, and the installed
engine passes in every weight type with the report `axchat doctor` prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from axchat.doctor import selftest

HERE = Path(__file__).resolve().parent
CRASHING = (sys.executable, str(HERE / "crashing_child.py"))


def test_a_child_that_crashes_is_named_by_its_signal_and_fails_the_type() -> None:
    result, report = selftest.run_type("q8_0", None, child=CRASHING)
    assert report is None and not result.passed and result.crashed
    assert "crashed: segmentation fault (SIGSEGV) in the engine running q8_0" in result.detail


def test_without_a_sound_f32_the_other_types_still_run_and_say_so() -> None:
    results = selftest.run_all(("f32", "q8_0"), child=CRASHING)
    assert [r.kind for r in results] == ["f32", "q8_0"] and not any(r.passed for r in results)
    assert "f32 crashed" in selftest.summary(results)


def test_doctor_passes_every_weight_type_and_prints_the_report(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "axchat", "doctor", "--json", "--socket", str(tmp_path / "none.sock")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    types = {r["kind"]: r for r in report["weight_types"]}
    assert list(types) == list(selftest.WEIGHT_TYPES) and all(r["passed"] for r in types.values()), types
    for kind, r in types.items():
        assert r["agreement"] >= selftest.AGREEMENT_FLOOR[kind] and r["decode_tok_s"] > 0
    # What a problem report needs: the CPU, the engine's build and features, the socket.
    assert report["cpu"]["model"] and report["cpu"]["cores"] >= 1
    assert report["engine"]["version"] == "llama-cpp-python " + __import__("llama_cpp").__version__
    assert "CPU :" in report["engine"]["system_info"]
    assert report["socket"].endswith("none.sock") and report["daemon"].startswith("no daemon answers")
    assert report["passed"] is True


def test_doctor_text_report_names_each_type_and_the_socket(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "axchat", "doctor", "--socket", str(tmp_path / "none.sock")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("cpu:") and any(line.startswith("engine:  llama-cpp-python") for line in lines)
    for kind in selftest.WEIGHT_TYPES:
        assert any(line.split()[:2] == [kind, "pass"] for line in lines), done.stdout
    assert any(line.startswith("system info: CPU :") for line in lines)
    assert lines[-1] == "all weight types pass"
