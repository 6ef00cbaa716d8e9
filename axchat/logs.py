"""Log set-up for the long-running processes (the daemon, the web bridge): plain lines for
journald and pipes, a timestamp only on a terminal."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "info") -> None:
    # journald stamps each line itself and shows raw escape codes, so no time and no
    # colour unless a person is watching a terminal.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if sys.stderr.isatty():
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (transformers' warnings) stays at warning level.
    for noisy in ("transformers", "huggingface_hub", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
