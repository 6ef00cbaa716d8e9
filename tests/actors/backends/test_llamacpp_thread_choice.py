"""The llama.cpp thread probe at load: it keeps one of its candidates, says what it
measured, and leaves every KV cell free for the first request."""

from __future__ import annotations

from pathlib import Path

from axchat.actors.backends.llamacpp import thread_choice
from axchat.actors.backends.llamacpp.engine import Engine

CELLS = 256


def test_the_probe_keeps_a_candidate_and_frees_its_cells(llamacpp_f32_gguf: Path) -> None:
    engine = Engine(llamacpp_f32_gguf, cells=CELLS, sequences=2, batch=64, threads=1, exact=True)
    try:
        best, said = thread_choice.choose(engine, [2, 1])
        assert best in (1, 2)
        assert said.startswith(f"{best} threads by decode step measured at load (")
        # Every cell again: a prompt as long as the pool fits only if the probe's are free.
        logits = engine.run([5] * CELLS, list(range(CELLS)), [0] * CELLS, [CELLS - 1])
        assert logits.shape == (1, engine.vocab_size)
    finally:
        engine.close()
