"""What transformers computes for the tiny model (float32): the reference both CPU
backends' tests compare with. A plain module the test files import."""

from __future__ import annotations

import numpy as np


def prompt(n: int, salt: int = 0) -> list[int]:
    return [(7 * i + 11 * salt + 5) % 990 + 4 for i in range(n)]


def ref_logits(model, ids: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float().numpy()


def check_prefix_restore(backend, reference, atol: float) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
    """The prefix-cache contract every backend with one keeps: a kept sequence serves
    only its own salt, and what it restores extends to what a fresh prefill computes.
    Leaves sequence 3 (alice's second turn, restored) running; returns (first, turn2)."""
    first = prompt(50, 8)
    backend.start(1, first, "alice")
    backend.extend(1, first)
    token = int(np.argmax(backend.decode([1], [7])[0]))
    backend.release(1, keep=("alice", [*first, 7]))
    assert backend.prefix_cache_usage()[0] == 1 and backend.live_sequences() == 0

    turn2 = [*first, 7, token, *prompt(20, 9)]
    assert backend.start(2, turn2, "bob") == 0  # another client's cache is not shared
    backend.release(2)
    restored = backend.start(3, turn2, "alice")
    assert restored == 51
    np.testing.assert_allclose(backend.extend(3, turn2[restored:]), ref_logits(reference, turn2), atol=atol)
    return first, turn2


def greedy_reference(model, ids: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, len(ids) :].tolist()
