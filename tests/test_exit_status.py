"""How a started process ended, in words."""

from __future__ import annotations

import signal
import subprocess
import sys

from axchat import exit_status


def test_a_real_segfault_is_named_with_where_it_happened() -> None:
    code = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], capture_output=True).returncode
    assert exit_status.crashed(code) and exit_status.signal_of(code) == signal.SIGSEGV
    assert exit_status.describe(code, "while loading the model") == (
        "crashed: segmentation fault (SIGSEGV) in the engine while loading the model"
    )


def test_other_endings_say_what_they_are() -> None:
    assert exit_status.describe(1) == "exited with code 1"
    assert exit_status.describe(-signal.SIGILL) == "crashed: illegal instruction (SIGILL) in the engine"
    assert "SIGKILL" in exit_status.describe(-signal.SIGKILL) and "memory" in exit_status.describe(-signal.SIGKILL)
    assert exit_status.describe(-signal.SIGTERM, "while loading") == "was ended by SIGTERM while loading"
    assert not exit_status.crashed(0) and not exit_status.crashed(-signal.SIGTERM) and exit_status.signal_of(3) is None


def test_the_doctor_hint_runs_from_where_the_user_is() -> None:
    hint = exit_status.doctor_hint()
    assert hint.startswith("`") and hint.split("`")[1].endswith("axchat doctor")
