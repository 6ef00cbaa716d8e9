"""How a bench script talks: progress lines on stderr, one JSON object on stdout, and a
`BenchError` as one paragraph with exit status 1."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any


class BenchError(Exception):
    """Something failed: the message is for the user, one paragraph."""


class Log:
    def __init__(self, prog: str) -> None:
        self.prog = prog

    def __call__(self, msg: str) -> None:
        print(f"{self.prog}: {msg}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 15) -> str:
    kept = text.strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) if kept else "    (nothing)"


def run_main(prog: str, bench: Any, args: Any) -> int:
    def _sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind through the finally blocks: the daemon gets stopped

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = bench(args)
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2))
    return 0
