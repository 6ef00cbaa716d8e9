"""One `axchat web --port 0` in front of a bench's daemon, started with a deadline on its
`listening:` line and stopped with SIGTERM; its log is kept for the result."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.daemon import bench_env
from harness.output import BenchError

LISTENING = re.compile(r"listening: (http://\S+/)")
START_TIMEOUT_S = 60.0


class Bridge:
    def __init__(self, socket: str) -> None:
        # Its own directory: the daemon's goes when the daemon finishes.
        self.log_path = Path(tempfile.mkdtemp(prefix="axchat-bench-web-")) / "web.log"
        self.socket = socket
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.exit_code: int | None = None

    def start(self) -> str:
        """The bridge's base URL, once it listens."""
        with open(self.log_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "axchat", "web", "--port", "0", "--socket", self.socket],
                stdout=subprocess.DEVNULL, stderr=err, env=bench_env(), text=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (found := LISTENING.search(self.log_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the bridge did not start: {self.log_text()[-2000:]}")
            time.sleep(0.05)  # polling its log for the listening line, with a deadline
        self.url = found.group(1)
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.exit_code is None:
            self.proc.terminate()
            self.exit_code = self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
