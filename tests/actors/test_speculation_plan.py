"""The rule for how many proposed tokens each stream may have verified in a step."""

from __future__ import annotations

from axchat.actors.device.speculation_plan import MAX_DRAFT, PROBE_EVERY, StreamOutlook, best_length, draft_lengths

SURE = StreamOutlook(acceptance=1.0, most=100)


def test_a_full_batch_never_speculates() -> None:
    assert draft_lengths([SURE] * 8, row_budget=8, others_waiting=False) == [0] * 8


def test_nobody_speculates_while_someone_else_needs_the_device() -> None:
    assert draft_lengths([SURE], row_budget=8, others_waiting=True) == [0]


def test_one_stream_alone_takes_every_spare_row() -> None:
    assert draft_lengths([SURE], row_budget=8, others_waiting=False) == [7]
    assert draft_lengths([SURE], row_budget=64, others_waiting=False) == [MAX_DRAFT]


def test_spare_rows_are_shared_one_at_a_time() -> None:
    # 3 streams, 8 rows: 5 spare, dealt round the streams: none gets a second before all have one.
    assert draft_lengths([SURE] * 3, row_budget=8, others_waiting=False) == [2, 2, 1]
    sure, unsure = SURE, StreamOutlook(acceptance=0.0, most=100)
    assert draft_lengths([unsure, sure], row_budget=8, others_waiting=False) == [0, 6]


def test_rows_given_never_exceed_the_spare_ones() -> None:
    for n in range(1, 9):
        for budget in range(0, 12):
            given = draft_lengths([SURE] * n, row_budget=budget, others_waiting=False)
            assert sum(given) <= max(budget - n, 0)


def test_a_stream_never_proposes_past_its_length_limit() -> None:
    assert draft_lengths([StreamOutlook(acceptance=1.0, most=2)], row_budget=8, others_waiting=False) == [2]
    assert draft_lengths([StreamOutlook(acceptance=1.0, most=0, idle_steps=99)], row_budget=8, others_waiting=False) == [0]


def test_low_acceptance_backs_off_and_probes_now_and_then() -> None:
    assert best_length(0.05, 8) == 0
    assert best_length(1.0, 8) == 8
    assert 0 < best_length(0.6, 8) < 8
    wrong = StreamOutlook(acceptance=0.0, most=8, idle_steps=PROBE_EVERY - 1)
    assert draft_lengths([wrong], row_budget=8, others_waiting=False) == [0]
    probe = StreamOutlook(acceptance=0.0, most=8, idle_steps=PROBE_EVERY)
    assert draft_lengths([probe], row_budget=8, others_waiting=False) == [1]


def test_longer_proposals_need_more_acceptance() -> None:
    lengths = [best_length(a / 10, 8) for a in range(11)]
    assert lengths == sorted(lengths)
