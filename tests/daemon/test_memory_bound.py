"""Memory bounded by design: the frame limit has a ceiling, and a prompt over the context
is refused from its length, so the daemon's peak memory for a refused 15 MB prompt stays
within twice the frame above where it idled."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import DaemonProcess, RawClient

from axchat.protocol import v1

FRAME = v1.MAX_FRAME_BYTES_CEILING


def kib(pid: int, field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert found is not None
    return int(found.group(1)) * 1024


def test_frame_limit_has_a_ceiling(tiny_model_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "axchat", "serve", "--model", str(tiny_model_dir), "--max-frame-bytes", str(64 << 20)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "16777216" in proc.stderr, proc.stderr


def test_a_refused_huge_prompt_costs_at_most_twice_its_frame(tiny_model_dir: Path) -> None:
    d = DaemonProcess(tiny_model_dir, "--max-frame-bytes", str(FRAME)).wait_ready()
    client = RawClient(d.socket)
    try:
        assert isinstance(client.request(v1.Ping()), v1.Pong)
        prompt = "word " * ((FRAME - 4096) // 5)
        frames = v1.encode(v1.Envelope(id="huge"), v1.Generate(prompt=prompt))
        size = len(frames[1])
        del prompt
        idle = kib(d.proc.pid, "VmRSS")
        Path(f"/proc/{d.proc.pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from now
        client.send_frames(frames)
        _, refused = client.recv(want="huge")
        assert isinstance(refused, v1.Error) and refused.code == "context_overflow", refused
        peak = kib(d.proc.pid, "VmHWM")
        assert peak - idle <= 2 * size, f"peak {peak >> 20} MiB, idle {idle >> 20} MiB, frame {size >> 20} MiB"
        assert isinstance(client.request(v1.Ping()), v1.Pong)
    finally:
        client.close()
        assert d.stop() == 0, d.log_text()
