"""`axchat` as the tests run it: `python tests/testdaemon.py serve ...`, the real CLI with
test-only switches wrapped around the production code, never inside it.

Held requests: a request asking for at least `HELD_MIN_TOKENS` tokens is paced, each
forward pass that carries it taking at least `HELD_STEP_S` more on the device thread
(as a slow card would: the event loop stays free, cancels land between steps). A test
that needs a request "still running" at its next step sends one (conftest's `HELD`), and
ends it itself: by cancelling, or by `DaemonProcess.release_held()`, which creates the
file named by `$AXCHAT_TEST_RELEASE_FILE` so that held requests run at full speed from
then on. A fast machine can no longer finish such a request before the test's next step
(2,000 tokens take at least 40 s), and a slow one is no slower than before.

Requests of ordinary size run as in production.

Gates, each off unless its variable names a file; whatever waits at one waits until that
file exists (at most `GATE_LIMIT_S`), so a test opens it by creating the file:
- `$AXCHAT_TEST_LOAD_GATE` (`LOAD_GATE_ENV`): a model load, at its weights stage, so a test
  can hold a reload open while clients queue behind it (tests/daemon/test_keepalive.py);
- `$AXCHAT_TEST_TOKENIZE_GATE` (`TOKENIZE_GATE_ENV`): the encoding of a request with
  `HOLD_MARKER` in its text, so a test can hold one client's tokenizing open
  (tests/daemon/test_tokenizer_fairness.py);
- `$AXCHAT_TEST_PREFILL_GATE` (`PREFILL_GATE_ENV`): the device thread, before a forward
  that feeds a later chunk of the prompt of a request asking for `PREFILL_GATE_TOKENS`
  tokens, with part of that prompt already in the KV: `status` then shows the request
  mid-prefill for as long as the test keeps the gate shut
  (tests/actors/backends/test_llamacpp_weight_types.py).

Nothing here is in the package: the switches live only in this launcher.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

HELD_MIN_TOKENS = 1024
HELD_STEP_S = 0.02
LOAD_GATE_ENV = "AXCHAT_TEST_LOAD_GATE"
TOKENIZE_GATE_ENV = "AXCHAT_TEST_TOKENIZE_GATE"
HOLD_MARKER = "AXCHAT-TEST-HOLD"
PREFILL_GATE_ENV = "AXCHAT_TEST_PREFILL_GATE"
PREFILL_GATE_TOKENS = 999
GATE_LIMIT_S = 120.0
GATE_POLL_S = 0.01


def _released() -> bool:
    path = os.environ.get("AXCHAT_TEST_RELEASE_FILE")
    return bool(path) and os.path.exists(path)  # type: ignore[arg-type]


def _paced(step: Callable[..., Any]) -> Callable[..., Any]:
    def paced(*args: Any) -> Any:  # runs on the device thread, like the forward itself
        time.sleep(HELD_STEP_S)
        return step(*args)

    return paced


def _gated(step: Callable[..., Any], gate: str) -> Callable[..., Any]:
    def gated(*args: Any) -> Any:  # on the device thread: the forward waits, the loop does not
        _wait_for_gate(gate)
        return step(*args)

    return gated


def _mid_prefill(seq: Any) -> bool:
    return seq.sampling.max_tokens == PREFILL_GATE_TOKENS and 0 < seq.prefilled < len(seq.prompt_ids)


def install_held_requests() -> None:
    from axchat.actors.device import actor as device
    from axchat.actors.device import run_ahead

    # Every job for sequences goes to the device thread through `_submit` (`_forward`
    # and a run's queued successor alike).
    unpaced = device.DeviceActor._submit
    prefill_gate = os.environ.get(PREFILL_GATE_ENV)

    def paced_submit(self: Any, seqs: list[Any], fn: Callable[..., Any], *args: Any) -> Any:
        if prefill_gate and any(_mid_prefill(s) for s in seqs):
            fn = _gated(fn, prefill_gate)
        if not _released() and any(s.sampling.max_tokens >= HELD_MIN_TOKENS for s in seqs):
            if fn is run_ahead.run:  # a run of steps: each of its steps is paced
                args = (_paced(args[0]), *args[1:])
            else:
                fn = _paced(fn)
        return unpaced(self, seqs, fn, *args)

    device.DeviceActor._submit = paced_submit  # type: ignore[method-assign]


def _wait_for_gate(gate: str) -> None:
    deadline = time.monotonic() + GATE_LIMIT_S
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(GATE_POLL_S)  # polled on a loading or tokenizer thread, never the event loop


class _GatedEngine:
    """An engine from the backend registry whose `load` waits at the gate first."""

    def __init__(self, engine: Any, gate: str) -> None:
        self._engine = engine
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def load(self, model: str, options: Any) -> Any:
        _wait_for_gate(self._gate)
        return self._engine.load(model, options)


def install_load_gate() -> None:
    gate = os.environ.get(LOAD_GATE_ENV)
    if not gate:
        return
    from axchat.actors.backends import registry

    ungated = registry.engine

    def gated_engine(name: str) -> Any:
        return _GatedEngine(ungated(name), gate)

    registry.engine = gated_engine  # type: ignore[assignment]


def install_tokenize_gate() -> None:
    gate = os.environ.get(TOKENIZE_GATE_ENV)
    if not gate:
        return
    from axchat.actors.tokenizer import TokenizerActor

    ungated = TokenizerActor._encode_blocking

    def gated_encode(self: Any, messages: list[Any] | None, prompt: str | None, *rest: Any) -> Any:
        texts = [prompt or ""] if messages is None else [msg.content for msg in messages]
        if any(HOLD_MARKER in text for text in texts):
            _wait_for_gate(gate)
        return ungated(self, messages, prompt, *rest)

    TokenizerActor._encode_blocking = gated_encode  # type: ignore[method-assign]


if __name__ == "__main__":
    install_held_requests()
    install_load_gate()
    install_tokenize_gate()
    from axchat.cli import main

    sys.exit(main())
