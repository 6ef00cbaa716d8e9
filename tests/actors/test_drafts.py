"""Drafters and the verification of their proposals (no engine: rows of logits made here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from axchat.actors.device.drafts import ModelDrafter, NgramDrafter, OracleDrafter, Speculation, proposals, verify

VOCAB = 16


def rows_choosing(tokens: list[int]) -> np.ndarray:
    rows = np.zeros((len(tokens), VOCAB), dtype=np.float32)
    rows[np.arange(len(tokens)), tokens] = 1.0
    return rows


def argmax(row: np.ndarray) -> int:
    return int(np.argmax(row))


def test_ngram_proposes_what_followed_the_last_tokens_earlier() -> None:
    d = NgramDrafter([1, 2, 3, 4, 5, 9, 1, 2])
    assert d.propose(3) == [3, 4, 5]
    d.accept([3])
    assert d.propose(2) == [4, 5]


def test_ngram_prefers_the_longest_and_latest_match() -> None:
    d = NgramDrafter([7, 2, 3, 8, 1, 2, 3, 6, 0, 1, 2, 3])
    assert d.propose(1) == [6]  # "1 2 3" last continued with 6; "2 3" alone would say 8 or 6
    assert NgramDrafter([5, 6, 7]).propose(4) == []  # nothing repeats
    assert NgramDrafter([1, 2, 1, 2]).propose(0) == []


def test_ngram_follows_a_loop_in_its_own_reply() -> None:
    d = NgramDrafter([9])
    d.accept([4, 5, 6, 4, 5])
    assert d.propose(4) == [6, 4, 5]


def test_oracle_proposes_the_reply_with_corrupted_positions_wrong() -> None:
    d = OracleDrafter([3, 4, 5, 6], frozenset({1}))
    d.accept([3])
    first, second = d.propose(2)
    assert first != 4 and second == 5
    assert OracleDrafter([0, 1], frozenset({0})).propose(1) == [1]


def test_verify_keeps_the_agreeing_prefix_and_the_correction() -> None:
    rows = rows_choosing([4, 5, 7, 8])
    assert verify(argmax, rows, [4, 5, 6], produced=0, ends=frozenset(), room=100) == [4, 5, 7]
    assert verify(argmax, rows, [4, 5, 7], produced=0, ends=frozenset(), room=100) == [4, 5, 7, 8]  # all right: a bonus token
    assert verify(argmax, rows[:1], [], produced=0, ends=frozenset(), room=100) == [4]


def test_verify_stops_at_the_end_of_the_turn() -> None:
    rows = rows_choosing([4, 2, 7, 8])
    assert verify(argmax, rows, [4, 2, 7], produced=0, ends=frozenset({2}), room=100) == [4, 2]
    assert verify(argmax, rows, [4, 2, 7], produced=5, ends=frozenset(), room=7) == [4, 2]


def test_speculation_counts_and_backs_off_when_wrong() -> None:
    spec = Speculation(NgramDrafter([1, 2, 3, 1, 2]))
    start = spec.outlook(100).acceptance
    spec.settle([3, 1], [3, 1, 2])
    assert (spec.proposed, spec.accepted) == (2, 2)
    assert spec.outlook(100).acceptance > start
    for _ in range(10):
        spec.settle([9, 9], [0])
    assert spec.outlook(100).acceptance < 0.1
    assert spec.outlook(1).most == 0  # one token left: nothing to propose after it


def test_forced_tokens_count_but_leave_the_guesses_odds_alone() -> None:
    spec = Speculation(NgramDrafter([1, 2, 3]))
    start = spec.outlook(100).acceptance
    spec.settle([7, 8, 9], [7, 8, 9, 4], sure=3)  # only forced tokens, all kept
    assert (spec.proposed, spec.accepted) == (3, 3) and spec.outlook(100).acceptance == start
    spec.settle([7, 8, 5], [7, 8, 6], sure=2)  # forced tokens kept, the guess after them wrong
    assert (spec.proposed, spec.accepted) == (6, 5) and spec.outlook(100).acceptance < start


def test_a_draft_models_streams_are_guessed_for_in_one_call() -> None:
    calls: list[tuple[list[int], list[list[int]], list[int], list[int]]] = []

    def model(
        seq_ids: Sequence[int], histories: Sequence[Sequence[int]], prompts: Sequence[int], lengths: Sequence[int]
    ) -> list[list[int]]:
        calls.append((list(seq_ids), [list(h) for h in histories], list(prompts), list(lengths)))
        return [[seq_id] * k for seq_id, k in zip(seq_ids, lengths, strict=True)]

    a, b, idle = (Speculation(ModelDrafter(rid, [1, 2])) for rid in (7, 8, 9))
    a.settle((), (3,))  # the stream's first token: the draft model reads it too
    ngram = Speculation(NgramDrafter([4, 5, 6, 4, 5]))
    got = proposals([a, None, ngram, b, idle], [2, 3, 1, 1, 0], model)
    assert got == [[7, 7], [], [6], [8], []]
    assert calls == [([7, 8], [[1, 2, 3], [1, 2]], [2, 2], [2, 1])]
    assert proposals([ngram, None], [1, 0]) == [[6], []]  # no draft model's stream: no call
