"""`axchat serve`: parse flags, set up logging, run the daemon, map failures to exit codes."""

from __future__ import annotations

import faulthandler
import logging
import sys

from axchat import event_loop
from axchat.daemon.config import ConfigError, ServeConfig, parse
from axchat.daemon.server import run
from axchat.daemon.startup_error import StartupError
from axchat.logs import setup_logging

log = logging.getLogger("axchat.daemon")


def _run_loop(cfg: ServeConfig) -> int:
    return event_loop.run(run(cfg))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"axchat serve: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    # A fault in the engine's native code kills the process before any Python handler
    # runs; this writes the Python stack of every thread to the log first, so the log
    # says where (loading, warm-up, a decode step).
    faulthandler.enable()
    if cfg.check:
        from axchat.daemon.check import CheckFailed, check

        try:
            print(f"axchat serve --check: {check(cfg)}", file=sys.stderr)
        except CheckFailed as exc:
            print(f"axchat serve: error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        return _run_loop(cfg)
    except StartupError as exc:
        # One line, no traceback: these are the user's to fix, not bugs.
        print(f"axchat serve: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
