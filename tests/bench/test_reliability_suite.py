"""A short run of each reliability script as a test: bench/fuzz.py (fuzzed frames while
good clients stream) and bench/churn.py (rounds of cancels and vanishing clients). The
full runs and their figures are in docs/performance.md; here, the same scripts, fewer frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, model: Path, *args: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--model", str(model), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_fuzzed_frames_hurt_nobody(tiny_model_dir: Path) -> None:
    result = run_bench("fuzz.py", tiny_model_dir, "--frames", "400", "--seed", "1")
    assert result["crashes"] == 0 and result["daemon_exit_code"] == 0
    assert result["internal"] == 0 and result["tracebacks"] == 0
    assert result["no_reply"] == 0
    assert result["good_client_errors"] == [] and result["good_answers"] >= 2
    assert set(result["kinds"]) >= {"deep", "huge", "absurd", "random_bytes"}


def test_churn_leaks_nothing(tiny_model_dir: Path) -> None:
    result = run_bench("churn.py", tiny_model_dir, "--rounds", "3", "--clients", "16", "--seed", "1")
    assert result["leaked_sequences"] == 0 and result["stuck_requests"] == 0
    assert result["tracebacks"] == 0
    assert sum(result["outcomes"].values()) == 3 * 16


def test_hostile_http_bodies_cut_no_good_stream(tiny_model_dir: Path) -> None:
    result = run_bench("fuzz_http.py", tiny_model_dir, "--bodies", "40", "--seed", "1")
    assert result["good_streams_cut"] == 0, result["good_cuts"]
    assert result["server_errors"] == 0 and result["no_response"] == 0 and result["tracebacks"] == 0
    assert result["daemon_exit_code"] == 0 and result["bridge_exit_code"] == 0
    assert result["good_answers"] >= 3
    assert {"many_empty", "over_frame", "deep"} <= set(result["statuses"])
