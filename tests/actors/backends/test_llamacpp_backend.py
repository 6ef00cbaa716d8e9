"""The llamacpp backend on real llama.cpp with the tiny model converted to GGUF: greedy
tokens equal transformers' (f32), batching does not change a request's output, the
prefix cache shares cells and restores what a fresh prefill computes, cancellation
frees cells, proposed tokens give way to plain steps, and the converted file is cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers_reference import check_prefix_restore, greedy_reference, prompt, ref_logits

from axchat.actors.backends.llamacpp import gguf_cache, load
from axchat.actors.backends.llamacpp.backend import LlamaCppBackend

ATOL = 2e-3  # float32 throughout, but another op order and llama.cpp's own kernels


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture
def backend(tiny_model_dir: Path, llamacpp_f32_gguf: Path) -> LlamaCppBackend:
    # The session's converted file (the fixture made it): loading finds it in the cache.
    return load.load(str(tiny_model_dir), quant="f32", threads=1, prefix_cache_bytes=64 << 20)


def greedy(backend: LlamaCppBackend, seq: int, ids: list[int], n: int) -> list[int]:
    out = [int(np.argmax(backend.prefill(seq, ids)))]
    while len(out) < n:
        out.append(int(np.argmax(backend.decode([seq], [out[-1]])[0])))
    backend.release(seq)
    return out


def test_f32_greedy_tokens_equal_transformers_with_the_chat_template(tiny_model_dir: Path, backend: LlamaCppBackend, reference) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "Tell me a story about a cat."}], add_generation_prompt=True, return_dict=False)
    assert backend.info.backend == "llamacpp" and backend.info.dtype == "f32"
    assert greedy(backend, 1, list(ids), 40) == greedy_reference(reference, list(ids), 40)
    np.testing.assert_allclose(backend.prefill(2, prompt(30)), ref_logits(reference, prompt(30)), atol=ATOL)


def test_greedy_output_is_the_same_alone_and_in_a_batch_of_eight(backend: LlamaCppBackend) -> None:
    prompts = {s: prompt(5 + 13 * s, s) for s in range(8)}
    steps = 24
    alone = {s: greedy(backend, 100 + s, p, steps) for s, p in prompts.items()}
    order = list(prompts)
    for s in order:
        backend.start(s, prompts[s], f"c{s}")
    logits = backend.extend_batch(order, [prompts[s] for s in order])
    got = {s: [int(np.argmax(row))] for s, row in zip(order, logits, strict=True)}
    for _ in range(steps - 1):
        step = backend.decode(order[::-1], [got[s][-1] for s in order[::-1]])
        for s, row in zip(order[::-1], step, strict=True):
            got[s].append(int(np.argmax(row)))
    assert got == alone


def test_prefix_cache_shares_cells_and_restores_what_a_fresh_prefill_computes(backend: LlamaCppBackend, reference) -> None:  # type: ignore[no-untyped-def]
    first, turn2 = check_prefix_restore(backend, reference, ATOL)
    # A second branch from the same kept prefix while the first still runs.
    other = [*first, 7, *prompt(9, 10)]
    assert backend.start(4, other, "alice") == 51
    np.testing.assert_allclose(backend.extend(4, other[51:]), ref_logits(reference, other), atol=ATOL)
    # Alice's connection is gone: what was kept for her goes, and her cells with it.
    backend.release(3, keep=("alice", turn2))
    backend.release(4)
    assert backend.prefix_cache_usage()[0] == 1  # turn2 extends the first entry, which was dropped
    backend.forget_prefixes("alice")
    assert backend.prefix_cache_usage() == (0, 0) and backend.start(5, turn2, "alice") == 0


def test_a_decode_step_carrying_prompt_pieces_and_mixed_prompt_lengths_match_transformers(backend: LlamaCppBackend, reference) -> None:  # type: ignore[no-untyped-def]
    a, b, long, short = prompt(12, 20), prompt(30, 21), prompt(100, 22), prompt(9, 23)
    for s, p in ((1, a), (2, b)):
        backend.start(s, p, "x")
    ta, tb = (int(np.argmax(r)) for r in backend.extend_batch([1, 2], [a, b]))
    backend.start(3, long, "erin")
    backend.extend(3, long[:40])
    backend.start(4, short, "frank")
    # Two prompt pieces ride in the step: a long prompt's chunk and a short prompt whole.
    decoded, (chunk, whole) = backend.decode_and_extend([2, 1], [tb, ta], [3, 4], [long[40:90], short])
    np.testing.assert_allclose(decoded[0], ref_logits(reference, [*b, tb]), atol=ATOL)
    np.testing.assert_allclose(decoded[1], ref_logits(reference, [*a, ta]), atol=ATOL)
    np.testing.assert_allclose(chunk, ref_logits(reference, long[:90]), atol=ATOL)
    np.testing.assert_allclose(whole, ref_logits(reference, short), atol=ATOL)


def test_release_frees_the_cells_and_a_full_cache_gives_way_to_running_sequences(tiny_model_dir: Path, llamacpp_f32_gguf: Path) -> None:
    b = load.load(str(tiny_model_dir), quant="f32", threads=1, context=256, prefix_cache_bytes=1 << 20)
    cells = b.engine.cells
    for i in range(6):  # more kept prefixes than the cells hold beside a long prompt
        p = prompt(200, 30 + i)
        b.start(i, p, f"client{i}")
        b.extend(i, p)
        b.release(i, keep=(f"client{i}", p))
    assert b.prefix_cache_usage()[0] >= 1
    # Cancelled mid-prompt: its cells go at once, nothing kept.
    b.start(50, prompt(200, 50), "z")
    b.extend(50, prompt(200, 50)[:100])
    b.release(50, keep=("z", prompt(200, 50)))
    assert b.live_sequences() == 0
    # Running sequences filling most of the cells push the kept prefixes out.
    n = cells // 256
    for s in range(min(n, 8)):
        b.start(100 + s, prompt(250, s), "y")
    b.extend_batch(list(range(100, 100 + min(n, 8))), [prompt(250, s) for s in range(min(n, 8))])
    assert b.live_sequences() == min(n, 8)
    b.close()


def test_the_converted_file_is_cached_by_source_and_weight_type(tiny_model_dir: Path, llamacpp_f32_gguf: Path) -> None:
    again = gguf_cache.cached_path(tiny_model_dir, "f32")
    assert again.is_file() and again.parent == gguf_cache.cache_root()
    assert gguf_cache.cached_path(tiny_model_dir, "f16") != again


def test_a_long_neighbour_leaves_a_sequences_logits_as_alone(backend: LlamaCppBackend) -> None:
    """f32 runs attention without flash attention, so cells other sequences hold add exact
    zeros; what is left between alone and batched is the matmul kernels' order (~1e-7)."""
    ids = prompt(15, 40)
    alone = [backend.prefill(1, ids)]
    for _ in range(8):
        alone.append(backend.decode([1], [int(np.argmax(alone[-1]))])[0])
    backend.release(1)
    long = prompt(600, 41)
    backend.start(2, long, "n")
    for start in range(0, 600, 200):
        backend.extend(2, long[start : start + 200])
    backend.start(3, ids, "m")
    beside = [backend.extend_batch([3], [ids])[0]]
    for _ in range(8):
        beside.append(backend.decode([2, 3], [5, int(np.argmax(beside[-1]))])[1])
    assert max(float(np.abs(a - b).max()) for a, b in zip(alone, beside, strict=True)) < 1e-6


def test_each_turn_supersedes_the_entry_it_started_from(backend: LlamaCppBackend) -> None:
    """A conversation's next turn never extends its last entry exactly (the answer comes
    back as re-tokenized text), so without this every turn kept one more entry and a
    few chatty conversations pushed the others' out of the cache."""
    others = {f"u{i}": prompt(20, 300 + i) for i in range(22)}
    for i, (salt, p) in enumerate(others.items()):
        backend.start(1000 + i, p, salt)
        backend.extend(1000 + i, p)
        backend.release(1000 + i, keep=(salt, p))
    turn, kept = prompt(20, 7), 0
    for n in range(8):  # eight turns of one conversation, each answer sent back changed
        seq = 2000 + n
        cached = backend.start(seq, turn, "chatty")
        assert cached == (0 if n == 0 else kept - 1)  # all of the last turn but its last token
        backend.extend(seq, turn[cached:])
        backend.release(seq, keep=("chatty", turn))
        kept = len(turn)
        turn = [*turn[:-1], 1, 2, *prompt(4, 400 + n)]  # last token differs, then a new question
    assert backend.prefix_cache_usage()[0] == len(others) + 1
    for i, (salt, p) in enumerate(others.items()):  # nobody else was pushed out
        assert backend.start(3000 + i, p, salt) == len(p) - 1
        backend.release(3000 + i)


def test_proposals_never_take_the_cells_a_plain_step_needs(tiny_model_dir: Path, llamacpp_f32_gguf: Path) -> None:
    b = load.load(str(tiny_model_dir), quant="f32", threads=1, context=256, prefix_cache_bytes=0)
    seqs = list(range(b.capabilities.max_batch))
    fill = b.engine.cells // len(seqs) - 1  # a cell left for each sequence's next token
    for s in seqs:
        b.start(s, prompt(fill, s), "c")
    b.extend_batch(seqs, [prompt(fill, s) for s in seqs])
    rows = b.decode_drafts(seqs, [7] * len(seqs), [[8, 9, 10]] * len(seqs))
    assert [len(r) for r in rows] == [1] * len(seqs)  # no room for the proposals: fed without
    b.trim(0, 1)  # a cell back: exactly one more token fits
    assert [len(r) for r in b.decode_drafts([0], [7], [[8, 9]])] == [1]
    b.close()


def test_kept_conversations_take_no_cells_from_running_sequences(backend: LlamaCppBackend) -> None:
    """A kept conversation lives in host memory: the pool's cells (which every decode
    step's attention spans) hold running sequences only, and the next turn gets it back."""
    import llama_cpp

    p = prompt(30, 11)
    backend.start(1, p, "a")
    backend.extend(1, p)
    backend.release(1, keep=("a", p))
    assert backend.prefix_cache_usage()[0] == 1
    ids = range(backend.capabilities.max_batch)
    assert all(llama_cpp.llama_memory_seq_pos_max(backend.engine.memory, s) == -1 for s in ids)
    assert backend.start(2, p, "a") == len(p) - 1  # all of it but the token that gives logits
    assert backend.start(3, p, "b") == 0  # another client's conversation is not its own
    backend.release(2)
    backend.release(3)
