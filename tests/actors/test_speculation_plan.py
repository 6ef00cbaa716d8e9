"""The rule for how many proposed tokens each stream may have verified in a step, and the
measured step costs it reads."""

from __future__ import annotations

import math

from axchat.actors.device.clock import RowCosts
from axchat.actors.device.speculation_plan import MAX_DRAFT, StreamOutlook, best_length, draft_lengths, flat_rows

SURE = StreamOutlook(acceptance=1.0, most=100, since_tried=0)
WRONG = StreamOutlook(acceptance=0.0, most=100, since_tried=0)


def cpu_like(base: int, rows: int) -> float:
    """As measured on a 2-core CPU: a second row costs two steps, later ones a third each."""

    def t(r: int) -> float:
        return 1.0 if r <= 1 else 2.0 + (r - 2) / 3

    return t(rows) / t(base)


def test_a_full_batch_never_speculates() -> None:
    assert draft_lengths([SURE] * 8, row_budget=8, others_waiting=False) == [0] * 8


def test_nobody_speculates_while_someone_else_needs_the_device() -> None:
    assert draft_lengths([SURE], row_budget=8, others_waiting=True) == [0]


def test_one_stream_alone_takes_every_spare_row() -> None:
    assert draft_lengths([SURE], row_budget=8, others_waiting=False) == [7]
    assert draft_lengths([SURE], row_budget=64, others_waiting=False) == [MAX_DRAFT]
    assert draft_lengths([SURE], row_budget=8, others_waiting=False, cost=cpu_like) == [7]


def test_spare_rows_are_shared_one_at_a_time() -> None:
    # 3 streams, 8 rows: 5 spare, dealt round the streams: none gets a second before all have one.
    assert draft_lengths([SURE] * 3, row_budget=8, others_waiting=False) == [2, 2, 1]
    assert draft_lengths([WRONG, SURE], row_budget=8, others_waiting=False) == [0, 6]


def test_rows_given_never_exceed_the_spare_ones() -> None:
    for n in range(1, 9):
        for budget in range(0, 12):
            for s in (SURE, StreamOutlook(acceptance=0.0, most=100)):
                given = draft_lengths([s] * n, row_budget=budget, others_waiting=False)
                assert sum(given) <= max(budget - n, 0)


def test_a_stream_never_proposes_past_its_length_limit() -> None:
    assert draft_lengths([StreamOutlook(acceptance=1.0, most=2)], row_budget=8, others_waiting=False) == [2]
    assert draft_lengths([StreamOutlook(acceptance=1.0, most=0)], row_budget=8, others_waiting=False) == [0]


def test_expensive_rows_need_high_acceptance() -> None:
    cheap = lambda k: flat_rows(1, 1 + k)  # noqa: E731
    dear = lambda k: cpu_like(1, 1 + k)  # noqa: E731
    assert best_length(0.05, 8, cheap) == 0
    assert best_length(1.0, 8, cheap) == 8
    assert 0 < best_length(0.6, 8, cheap) < 8
    assert best_length(0.6, 8, dear) == 0  # 2.4 tokens expected for 4 steps' cost
    assert best_length(0.95, 7, dear) == 7
    lengths = [best_length(a / 10, 8, cheap) for a in range(11)]
    assert lengths == sorted(lengths)


def test_a_new_stream_tries_at_once_and_a_wrong_one_tries_again_when_it_has_paid() -> None:
    new = StreamOutlook(acceptance=0.5, most=100)  # never tried
    assert draft_lengths([new], row_budget=8, others_waiting=False, cost=cpu_like) == [7]
    # 7 proposals (8 rows) cost 3 steps more: a try every 3 / PROBE_SHARE = 150 steps.
    lately = StreamOutlook(acceptance=0.0, most=100, since_tried=149)
    assert draft_lengths([lately], row_budget=8, others_waiting=False, cost=cpu_like) == [0]
    due = StreamOutlook(acceptance=0.0, most=100, since_tried=150)
    assert draft_lengths([due], row_budget=8, others_waiting=False, cost=cpu_like) == [7]


def test_row_costs_are_measured_and_lie_between_measured_neighbours() -> None:
    costs = RowCosts()
    assert costs.cost(1, 3) == flat_rows(1, 3)  # nothing measured: the optimistic guess
    costs.observe(8, 38.0)
    assert costs.cost(1, 8) == math.inf  # no plain step yet: proposals wait for one
    assert draft_lengths([StreamOutlook(1.0, 7)], row_budget=8, others_waiting=False, cost=costs.cost) == [0]
    costs.observe(1, 10.0)
    costs.observe(8, 38.0)
    assert costs.cost(1, 8) == 3.8
    assert costs.cost(1, 4) == (10.0 + 3 / 7 * 28.0) / 10.0  # not measured: between its neighbours
    assert costs.cost(8, 9) == flat_rows(8, 9)  # beyond them: the guess from the last
    costs.observe(8, 90.0)  # slowed by other work: the fastest recent step stands
    assert costs.cost(1, 8) == 3.8


def test_forced_tokens_are_priced_as_sure_and_dealt_first() -> None:
    dear = lambda k: cpu_like(1, 1 + k)  # noqa: E731
    assert best_length(0.0, 8, dear) == 0
    assert best_length(0.0, 8, dear, sure=7) == 7  # 8 tokens for 4 steps' cost, every one of them
    assert best_length(0.0, 8, dear, sure=1) == 0  # 2 tokens for 2 steps' cost: not worth it
    forced = StreamOutlook(acceptance=0.0, most=100, since_tried=0, sure=3)
    guessing = StreamOutlook(acceptance=0.9, most=100, since_tried=0)
    # 4 spare rows: the forced stream's 3 sure ones first, the guesser gets what is left.
    assert draft_lengths([guessing, forced], row_budget=6, others_waiting=False) == [1, 3]
    assert draft_lengths([guessing, guessing], row_budget=6, others_waiting=False) == [2, 2]
    assert draft_lengths([forced] * 8, row_budget=8, others_waiting=False) == [0] * 8  # still only spare rows
