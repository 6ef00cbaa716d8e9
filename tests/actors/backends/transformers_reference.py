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


def greedy_reference(model, ids: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, len(ids) :].tolist()
