"""How many tokens of a long prompt go in the next forward, from what forwards cost now.

Why at run time and not only at load: while a long prompt goes in, every running stream
waits for its chunk on top of its own decode step (the chunk rides in the step where
the backend can, else takes a forward between two steps). The load-time probe sizes a
chunk for a full batch at a shallow depth; in use the batch is often smaller (its step
cheaper) and the chunks get dearer as the prompt's KV grows (SmolLM2 shape on 2 cores:
a 16-token chunk 270 ms at position 200, 420 ms at 1700). Sizing each chunk from the
latest costs keeps what it adds near one decode step of the batch actually running.
With nobody decoding there is nobody to be fair to, and the prompt goes in the largest
chunks.
"""

from __future__ import annotations

# The smallest chunk. A chunk mostly rides in a decode step, whose forward is paid for
# anyway; at 1.9k positions on the 135M shape 8 prompt tokens cost two to three steps of
# three chatters (their p95 gap per token 3.2x normal in bench/fairness.py), 4 about one
# (2.1x), for a paste's first token 17 s instead of 14 s.
MIN_TOKENS = 4
ROUND = 8  # chunk sizes in multiples of this, so shapes repeat
SMOOTHING = 0.5  # weight of the newest measurement of a prompt token's cost


class ChunkSizer:
    def __init__(self, initial: int, alone: int) -> None:
        """`initial`: the load-time choice, used until a chunk has been measured;
        `alone`: the chunk when no stream is decoding (and the upper bound)."""
        self.alone = max(alone, MIN_TOKENS)
        self.initial = min(max(initial, MIN_TOKENS), self.alone)
        self._ms_per_token: float | None = None

    def observe(self, tokens: int, ms: float) -> None:
        """A chunk of `tokens` prompt tokens added `ms`: its own forward's time, or what
        it added to the decode step that carried it."""
        if tokens <= 0 or ms <= 0:
            return
        cost = ms / tokens
        old = self._ms_per_token
        self._ms_per_token = cost if old is None else SMOOTHING * cost + (1 - SMOOTHING) * old

    def next(self, decode_step_ms: float | None) -> int:
        """Tokens for the next chunk. `decode_step_ms`: what a decode step of the
        streams running beside it costs now; None when nothing else is decoding."""
        if decode_step_ms is None:
            return self.alone
        if self._ms_per_token is None or decode_step_ms <= 0:
            return self.initial
        tokens = int(decode_step_ms / self._ms_per_token) // ROUND * ROUND
        return max(MIN_TOKENS, min(self.alone, tokens))
