"""The llamacpp backend's draft model on real llama.cpp (the tiny model, f32, drafting for
itself so that its guesses are known): it guesses what greedy decoding chooses, for
several sequences in one batch; after a rejected guess its KV follows the sequence's
own tokens; a released sequence frees its draft cells. And the two readers of a
vocabulary (a GGUF's, a Hugging Face directory's before conversion) agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_llamacpp_backend import greedy
from transformers_reference import prompt

from axchat.actors.backends.llamacpp import load, same_vocabulary
from axchat.actors.backends.llamacpp.backend import LlamaCppBackend
from axchat.actors.backends.llamacpp.same_vocabulary import Vocabulary, difference


@pytest.fixture
def backend(tiny_model_dir: Path, llamacpp_f32_gguf: Path) -> LlamaCppBackend:
    return load.load(str(tiny_model_dir), quant="f32", threads=1, draft_model=str(tiny_model_dir))


def test_guesses_are_greedy_choices_for_several_sequences_at_once(backend: LlamaCppBackend) -> None:
    assert backend.capabilities.draft_model
    prompts = [prompt(9, 1), prompt(30, 2)]
    want = [greedy(backend, 10 + i, p, 8) for i, p in enumerate(prompts)]
    histories = [[*p, w[0]] for p, w in zip(prompts, want, strict=True)]
    got = backend.propose([1, 2], histories, [len(p) for p in prompts], [6, 3])
    assert got == [want[0][1:7], want[1][1:4]]
    assert backend.draft is not None and backend.draft.live_sequences() == 2
    backend.release(1)
    backend.release(2)
    assert backend.draft.live_sequences() == 0


def test_after_a_rejected_guess_the_draft_follows_the_sequences_own_tokens(backend: LlamaCppBackend) -> None:
    ids = prompt(12, 3)
    want = greedy(backend, 10, ids, 12)
    history = [*ids, want[0]]
    n = len(ids)
    assert backend.propose([1], [history], [n], [4]) == [want[1:5]]
    # The model kept two guesses and chose a token of its own after them (not the draft's).
    other = (want[3] + 1) % backend.info.vocab_size
    history += [*want[1:3], other]
    fresh = backend.propose([2], [history], [n], [3])
    assert backend.propose([1], [history], [n], [3]) == fresh
    # A sequence that did not speculate for a while catches up in the same batch.
    later = [*history, 5, 6]
    assert backend.propose([1, 2], [later, later], [n, n], [2, 2]) == backend.propose([3], [later], [n], [2]) * 2


def test_the_two_readers_of_a_vocabulary_agree(tiny_model_dir: Path, llamacpp_f32_gguf: Path) -> None:
    from_dir, from_gguf = same_vocabulary.of_hf_dir(tiny_model_dir), same_vocabulary.of_gguf(llamacpp_f32_gguf)
    assert from_dir.texts == from_gguf.texts
    assert {"bos", "eos"} <= from_dir.special.keys()
    assert all(from_gguf.special[k] == i for k, i in from_dir.special.items())
    assert difference(from_gguf, from_dir) is None


def test_a_difference_is_named() -> None:
    model = Vocabulary(("a", "b", "<eos>"), {"eos": 2, "bos": 0})
    assert difference(model, Vocabulary(("a", "b"))) == "it has 2 tokens, the model 3"
    assert difference(model, Vocabulary(("a", "c", "<eos>"))) == "its token 1 is 'c', the model's 'b'"
    assert difference(model, Vocabulary(("a", "b", "<eos>"), {"eos": 1})) == "its eos token is 1, the model's 2"
    assert difference(model, Vocabulary(("a", "b", "<eos>"), {"eos": 2})) is None  # a bos only one names is not compared


def test_the_draft_reads_a_prompt_with_the_model_and_a_release_frees_it(backend: LlamaCppBackend) -> None:
    ids = prompt(40, 4)
    want = greedy(backend, 10, ids, 6)
    assert backend.draft is not None
    backend.prefill(1, ids[:25])  # a long prompt in chunks: the draft takes each
    backend.extend(1, ids[25:])
    assert backend.draft.live_sequences() == 1
    assert backend.propose([1], [[*ids, want[0]]], [len(ids)], [5]) == [want[1:6]]
    backend.release(1)
    assert backend.draft.live_sequences() == 0
