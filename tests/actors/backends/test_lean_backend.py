"""The lean Llama path computes what transformers computes (float32): prefill, chunked
extend, batched decode of sequences of different lengths, prompts of different lengths
in one forward, prefix-cache restore, slots that move or are not contiguous, and
matmuls split across lanes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers_reference import check_prefix_restore, greedy_reference, prompt, ref_logits

from axchat.actors.backends.load_options import LoadOptions
from axchat.actors.backends.torch_engine import load as torch_load
from axchat.actors.backends.torch_engine.lean_backend import LeanTorchBackend

ATOL = 1e-4  # float32, different op order than transformers' forward


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture
def backend(tiny_model_dir: Path) -> LeanTorchBackend:
    b = torch_load.load(str(tiny_model_dir), LoadOptions(dtype="float32", threads=1, prefix_cache_bytes=64 << 20))
    assert isinstance(b, LeanTorchBackend)
    return b


def test_prefill_and_chunked_extend_match_transformers(backend: LeanTorchBackend, reference) -> None:  # type: ignore[no-untyped-def]
    ids = prompt(300)  # longer than the cache's first capacity (256): it grows on the way
    np.testing.assert_allclose(backend.prefill(1, ids[:40]), ref_logits(reference, ids[:40]), atol=ATOL)
    for start in range(40, 300, 64):
        chunk_end = min(300, start + 64)
        logits = backend.extend(1, ids[start:chunk_end])
    np.testing.assert_allclose(logits, ref_logits(reference, ids), atol=ATOL)


def test_batched_decode_of_different_lengths_is_greedy_identical(backend: LeanTorchBackend, reference) -> None:  # type: ignore[no-untyped-def]
    prompts = {10: prompt(5, 1), 11: prompt(37, 2), 12: prompt(120, 3)}
    steps = 12
    expected = {s: greedy_reference(reference, p, steps) for s, p in prompts.items()}
    got: dict[int, list[int]] = {s: [] for s in prompts}
    for s, p in prompts.items():
        got[s].append(int(np.argmax(backend.prefill(s, p))))
    for _ in range(steps - 1):
        order = [12, 10, 11]  # not slot order: rows come back in the caller's order
        logits = backend.decode(order, [got[s][-1] for s in order])
        for s, row in zip(order, logits, strict=True):
            got[s].append(int(np.argmax(row)))
    assert got == expected
    # And the logits of the last step are the reference's, row by row.
    for s, row in zip(order, logits, strict=True):
        np.testing.assert_allclose(row, ref_logits(reference, prompts[s] + got[s][:-1]), atol=ATOL)


def test_release_moves_a_slot_and_scattered_slots_still_decode(backend: LeanTorchBackend, reference) -> None:  # type: ignore[no-untyped-def]
    prompts = {1: prompt(9, 4), 2: prompt(17, 5), 3: prompt(25, 6)}
    last = {s: int(np.argmax(backend.prefill(s, p))) for s, p in prompts.items()}
    backend.release(1)  # sequence 3 moves into slot 0
    assert backend.live_sequences() == 2
    backend.prefill(4, prompt(3, 7))  # takes slot 2: sequences 3 and 2 are now slots 0 and 1
    # Sequences 3 and 4 are slots 0 and 2: not one slice, so their KV is gathered.
    logits = backend.decode([3, 4], [last[3], 5])
    np.testing.assert_allclose(logits[0], ref_logits(reference, prompts[3] + [last[3]]), atol=ATOL)
    np.testing.assert_allclose(logits[1], ref_logits(reference, [*prompt(3, 7), 5]), atol=ATOL)
    row = backend.decode([2], [last[2]])[0]
    np.testing.assert_allclose(row, ref_logits(reference, prompts[2] + [last[2]]), atol=ATOL)


def test_prefix_cache_restore_matches_a_fresh_prefill(backend: LeanTorchBackend, reference) -> None:  # type: ignore[no-untyped-def]
    check_prefix_restore(backend, reference, ATOL)


def test_prompts_of_different_lengths_in_one_forward_match_transformers(backend: LeanTorchBackend, reference) -> None:  # type: ignore[no-untyped-def]
    """extend_batch pads rows to the longest; a cached prefix shortens one of them."""
    history = prompt(40, 13)
    backend.start(9, history, "carol")
    backend.extend(9, history)
    backend.release(9, keep=("carol", history))
    prompts = {1: prompt(3, 14), 2: [*history, *prompt(6, 15)], 3: prompt(57, 16)}
    cached = {s: backend.start(s, p, "carol") for s, p in prompts.items()}
    assert cached == {1: 0, 2: 40, 3: 0}
    order = [3, 1, 2]
    logits = backend.extend_batch(order, [prompts[s][cached[s] :] for s in order])
    for s, row in zip(order, logits, strict=True):
        np.testing.assert_allclose(row, ref_logits(reference, prompts[s]), atol=ATOL)
    # The pads' KV is past each row's end: the next decode step sees only real tokens.
    first = {s: int(np.argmax(row)) for s, row in zip(order, logits, strict=True)}
    step = backend.decode(order, [first[s] for s in order])
    for s, row in zip(order, step, strict=True):
        np.testing.assert_allclose(row, ref_logits(reference, [*prompts[s], first[s]]), atol=ATOL)


def test_a_decode_step_carrying_prompt_pieces_matches_transformers(backend: LeanTorchBackend, reference) -> None:  # type: ignore[no-untyped-def]
    a, b, long, short = prompt(12, 20), prompt(30, 21), prompt(100, 22), prompt(9, 23)
    ta, tb = int(np.argmax(backend.prefill(1, a))), int(np.argmax(backend.prefill(2, b)))
    backend.start(3, long, "erin")
    backend.extend(3, long[:40])
    backend.start(4, short, "frank")
    # Two prompt pieces ride in the step: a long prompt's chunk and a short prompt whole.
    decoded, (chunk, whole) = backend.decode_and_extend([2, 1], [tb, ta], [3, 4], [long[40:90], short])
    np.testing.assert_allclose(decoded[0], ref_logits(reference, [*b, tb]), atol=ATOL)
    np.testing.assert_allclose(decoded[1], ref_logits(reference, [*a, ta]), atol=ATOL)
    np.testing.assert_allclose(chunk, ref_logits(reference, long[:90]), atol=ATOL)
    np.testing.assert_allclose(whole, ref_logits(reference, short), atol=ATOL)
    # Every sequence's KV now ends where it should: the next step picks up from there.
    last = backend.extend(3, long[90:])
    np.testing.assert_allclose(last, ref_logits(reference, long), atol=ATOL)


def test_lanes_compute_bit_for_bit_what_one_thread_does(tiny_model_dir: Path, backend: LeanTorchBackend) -> None:
    laned = torch_load.load(str(tiny_model_dir), LoadOptions(dtype="float32", threads=1, lanes=2, prefix_cache_bytes=0))
    try:
        assert isinstance(laned, LeanTorchBackend) and laned.lean.lanes is not None
        assert (laned.info.threads, laned.info.lanes) == (1, 2)
        lanes = laned.lean.lanes
        split_attention: list[int] = []
        real_map = lanes.map
        lanes.map = lambda fn, parts: split_attention.append(len(parts)) or real_map(fn, parts)  # type: ignore[method-assign]
        prompts = {1: prompt(21, 17), 2: prompt(8, 18), 3: prompt(90, 19)}
        for b in (backend, laned):
            for s, p in prompts.items():
                b.start(s, p, "dave")
        one = backend.extend_batch(list(prompts), list(prompts.values()))
        two = laned.extend_batch(list(prompts), list(prompts.values()))
        assert np.array_equal(one, two)
        assert split_attention and set(split_attention) == {2}  # attention was shared out too
        tokens = [int(np.argmax(row)) for row in one]
        assert np.array_equal(backend.decode(list(prompts), tokens), laned.decode(list(prompts), tokens))
    finally:
        laned.close()
    assert laned.lean.lanes is None  # its helper threads are stopped


def test_llama3_rope_scaling_matches_transformers(tmp_path: Path) -> None:
    """The rotary table comes from the model's own module, so scaled ropes are exact."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    from axchat.actors.backends.torch_engine.lean_llama import LeanLlama

    lean = LeanLlama(model, slots=2, context=512)
    ids = [(5 * i + 3) % 64 for i in range(200)]
    with torch.inference_mode():
        got = lean.forward(torch.tensor([ids]), [0], [0])[0].numpy()
    np.testing.assert_allclose(got, ref_logits(model, ids), atol=ATOL)


def test_compiled_decode_matches_eager_and_is_reported(tiny_model_dir: Path) -> None:
    compiled = torch_load.load(str(tiny_model_dir), LoadOptions(dtype="float32", threads=1, prefix_cache_bytes=0, compile=True))
    eager = torch_load.load(str(tiny_model_dir), LoadOptions(dtype="float32", threads=1, prefix_cache_bytes=0))
    assert compiled.info.compiled and compiled.info.compile_s > 0 and compiled.info.decode_path == "lean"
    assert not eager.info.compiled and eager.info.compile_s == 0
    ids = prompt(30, 10)
    for b in (compiled, eager):
        b.prefill(1, ids)
        b.prefill(2, ids[:11])
    a = compiled.decode([1, 2], [3, 4])
    b_ = eager.decode([1, 2], [3, 4])
    np.testing.assert_allclose(a, b_, atol=ATOL)


def test_generic_path_still_serves_other_architectures(tiny_model_dir: Path, reference) -> None:  # type: ignore[no-untyped-def]
    """lean=False is the path every non-Llama model takes: same answers, batched too."""
    generic = torch_load.load(str(tiny_model_dir), LoadOptions(dtype="float32", threads=1, prefix_cache_bytes=0), lean=False)
    assert generic.info.decode_path == "generic"
    a, b = prompt(13, 11), prompt(4, 12)
    ta = int(np.argmax(generic.prefill(1, a)))
    tb = int(np.argmax(generic.prefill(2, b)))
    logits = generic.decode([1, 2], [ta, tb])
    np.testing.assert_allclose(logits[0], ref_logits(reference, [*a, ta]), atol=ATOL)
    np.testing.assert_allclose(logits[1], ref_logits(reference, [*b, tb]), atol=ATOL)
