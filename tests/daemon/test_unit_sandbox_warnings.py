"""`axchat service print|install` warns when the unit's own sandboxing would hide the
program it starts (PrivateTmp=, ProtectHome=), and says what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from axchat.daemon import units

SYSTEM_WIDE = Path("/usr/lib/python3/dist-packages/axchat")  # wherever this checkout happens to be


def test_programs_the_system_unit_hides_are_named_with_the_fix() -> None:
    system = units.render(user=False, command="/tmp/venv/bin/axchat")
    tmp = units.sandbox_warnings(system, "/tmp/venv/bin/axchat", SYSTEM_WIDE)
    assert len(tmp) == 1 and "under /tmp" in tmp[0] and "PrivateTmp=no" in tmp[0] and "system-wide" in tmp[0]
    home = units.sandbox_warnings(system, "/home/alice/.venv/bin/axchat", SYSTEM_WIDE)
    assert len(home) == 1 and "ProtectHome=read-only" in home[0]
    assert units.sandbox_warnings(system, "/usr/local/bin/axchat", SYSTEM_WIDE) == []
    # An editable install: the program is fine, the package it imports is in a home directory.
    editable = units.sandbox_warnings(system, "/usr/local/bin/axchat", Path("/home/alice/axchat/axchat"))
    assert len(editable) == 1 and "axchat package /home/alice/axchat/axchat" in editable[0]
    # The per-user unit hides neither.
    assert units.sandbox_warnings(units.render(user=True), "/tmp/venv/bin/axchat") == []


def test_service_print_warns_on_stderr_and_still_prints_the_unit() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "axchat", "service", "print", "--exec", "/tmp/x/.venv/bin/axchat"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "ExecStart=/tmp/x/.venv/bin/axchat serve" in proc.stdout
    assert "warning:" in proc.stderr and "PrivateTmp" in proc.stderr
