"""Two daemons started at the same moment on one socket: exactly one serves, the other
exits at once naming the winner's pid, and stopping the winner leaves no socket behind."""

from __future__ import annotations

import re
import time
from pathlib import Path

from conftest import READY_TIMEOUT_S, DaemonProcess, RawClient, short_socket_dir

from axchat.protocol import v1


def test_the_second_of_two_simultaneous_daemons_exits_naming_the_first(tiny_model_dir: Path) -> None:
    sock = str(short_socket_dir() / "axchat.sock")
    both = [DaemonProcess(tiny_model_dir, socket=sock), DaemonProcess(tiny_model_dir, socket=sock)]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while sum(d.proc.poll() is not None for d in both) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling two processes' exit with a deadline, not synchronising
        losers = [d for d in both if d.proc.poll() is not None]
        assert len(losers) == 1, [d.log_text() for d in both]
        loser = losers[0]
        winner = both[1 - both.index(loser)]
        assert loser.proc.returncode != 0
        loser.proc.wait()
        named = re.search(r"another axchat daemon \(pid (\d+)\)", loser.log_text())
        assert named is not None and int(named.group(1)) == winner.proc.pid, loser.log_text()
        assert "loading" not in loser.log_text()  # refused before loading any model
        winner.wait_ready()
        client = RawClient(sock)
        try:
            assert isinstance(client.request(v1.Ping()), v1.Pong)
        finally:
            client.close()
        assert winner.stop() == 0
        assert not Path(sock).exists()
    finally:
        for d in both:
            if d.proc.poll() is None:
                d.stop()
