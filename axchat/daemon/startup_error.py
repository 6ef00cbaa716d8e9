"""The one error type that stops the daemon before it serves, raised by whichever
start-up step finds the problem and printed by `serve` as its one line."""

from __future__ import annotations


class StartupError(Exception):
    """Anything that stops the daemon before it serves; one line for the user."""
