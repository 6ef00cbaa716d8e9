"""An explicit `temperature` 0 is a request for greedy decoding. On the wire it is the same
as no temperature at all (the protocol's default, which encoders omit), and a model with
defaults of its own (an Ollama model's params) fills that in with its own temperature. A
`top_k` of 1 keeps only the most likely token under any temperature: the same choice as
greedy decoding, which the model's defaults then cannot undo."""

from __future__ import annotations


def top_k_for(temperature: float | None, top_k: int | None) -> int | None:
    """The `top_k` to send for a request's own `temperature` and `top_k` (None: not given)."""
    if temperature == 0 and top_k is None:
        return 1
    return top_k
