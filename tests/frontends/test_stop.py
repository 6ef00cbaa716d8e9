"""`axchat stop` signals only the process the kernel says listens on the socket."""

from __future__ import annotations

import subprocess
import sys

from conftest import short_socket_dir, start_problem_daemon


def test_stop_does_not_signal_a_pid_the_listener_only_claims() -> None:
    sock = short_socket_dir() / "axchat.sock"
    # The process a lying listener names: stop must leave it running.
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    liar = start_problem_daemon(str(sock), "wrong_pid", AXCHAT_PROBLEM_PID=str(bystander.pid))
    try:
        stop = subprocess.run(
            [sys.executable, "-m", "axchat", "stop", "--socket", str(sock), "--timeout", "5"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stop.returncode == 1, stop.stderr
        assert stop.stderr.count("\n") == 1, stop.stderr
        assert f"is pid {liar.pid}" in stop.stderr and f"says it is pid {bystander.pid}" in stop.stderr
        assert bystander.poll() is None and liar.poll() is None  # neither was signalled
    finally:
        liar.kill()
        liar.wait(timeout=30)
        bystander.kill()
        bystander.wait(timeout=30)
