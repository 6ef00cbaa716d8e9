"""`axchat` as the tests run it: `python tests/testdaemon.py serve ...`, the real CLI with
one test-only switch, so that no test depends on how fast the machine decodes.

Held requests: a request asking for at least `HELD_MIN_TOKENS` tokens is paced, each
forward pass that carries it taking at least `HELD_STEP_S` more on the device thread
(as a slow card would: the event loop stays free, cancels land between steps). A test
that needs a request "still running" at its next step sends one (conftest's `HELD`), and
ends it itself: by cancelling, or by `DaemonProcess.release_held()`, which creates the
file named by `$AXCHAT_TEST_RELEASE_FILE` so that held requests run at full speed from
then on. A fast machine can no longer finish such a request before the test's next step
(2,000 tokens take at least 40 s), and a slow one is no slower than before.

Requests of ordinary size run as in production. Nothing here is in the package: the
switch lives only in this launcher.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

HELD_MIN_TOKENS = 1024
HELD_STEP_S = 0.02


def _released() -> bool:
    path = os.environ.get("AXCHAT_TEST_RELEASE_FILE")
    return bool(path) and os.path.exists(path)  # type: ignore[arg-type]


def _paced(step: Callable[..., Any]) -> Callable[..., Any]:
    def paced(*args: Any) -> Any:  # runs on the device thread, like the forward itself
        time.sleep(HELD_STEP_S)
        return step(*args)

    return paced


def install_held_requests() -> None:
    from axchat.actors.device import actor as device

    unpaced = device.DeviceActor._forward

    async def paced_forward(self: Any, seqs: list[Any], fn: Callable[..., Any], *args: Any) -> Any:
        if not _released() and any(s.sampling.max_tokens >= HELD_MIN_TOKENS for s in seqs):
            fn = _paced(fn)
        return await unpaced(self, seqs, fn, *args)

    device.DeviceActor._forward = paced_forward  # type: ignore[method-assign]


if __name__ == "__main__":
    install_held_requests()
    from axchat.cli import main

    sys.exit(main())
