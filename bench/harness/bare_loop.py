"""A bare batched greedy loop on llama.cpp, no server: what the engine alone does with a
burst, the floor under every server's figure.

It runs in the bench's own process on the daemon's `Engine` (the same GGUF, cells,
threads and batch size), with the KV layout given: `unified` (one pool, the daemon's) or
per-sequence streams (llama-server `-np N`'s). A round feeds N prompts of the given
lengths in one forward, as llama-server does, then decodes one token for each in every
step (argmax of its row), until each has its tokens."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from harness.stream import Tally


class BareLoop:
    def __init__(self, gguf: Path, *, cells: int, sequences: int, threads: int, unified: bool) -> None:
        from axchat.actors.backends.llamacpp.engine import Engine

        self.engine = Engine(
            gguf, cells=cells, sequences=sequences, batch=512, threads=threads, exact=False, unified=unified
        )
        self.vocab = self.engine.vocab_size
        self.rng = random.Random(0)

    def round(self, prompt_lengths: list[int], tokens: int) -> list[Tally]:
        e, n = self.engine, len(prompt_lengths)
        recs = [Tally(sent=time.monotonic()) for _ in range(n)]
        ids: list[int] = []
        pos: list[int] = []
        seqs: list[int] = []
        want: list[int] = []
        for s, length in enumerate(prompt_lengths):
            # Ids from the upper vocabulary: no special tokens; the step's cost does not depend on them.
            ids += [self.rng.randrange(self.vocab // 2, self.vocab) for _ in range(length)]
            pos += list(range(length))
            seqs += [s] * length
            want.append(len(ids) - 1)
        rows: Any = e.run(ids, pos, seqs, want)
        now = time.monotonic()
        for rec in recs:
            rec.first = now
        at = list(prompt_lengths)  # each sequence's next position
        for step in range(tokens):
            nxt = [int(t) for t in rows.argmax(axis=1)]
            for rec in recs:
                rec.completion_tokens += 1
                rec.chunks += 1
            if step == tokens - 1:
                break
            rows = e.run(nxt, at, list(range(n)), list(range(n)))
            at = [x + 1 for x in at]
        end = time.monotonic()
        for s, rec in enumerate(recs):
            rec.done_at = end
            e.forget(s)
        return recs

    def close(self) -> None:
        self.engine.close()
