"""Runs of greedy decode steps on the device thread (actors/device/run_ahead.py), with
a scripted decode: where each lane stops, what it fed, and the run's own bounds."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from axchat.actors.device import run_ahead
from axchat.actors.device.drafts import OracleDrafter, Speculation
from axchat.actors.device.run_ahead import Lane

VOCAB = 16


class Script:
    """A decode whose rows make sequence `rid` pick `next_of[rid](fed token)`; it logs
    each step's (sequence ids, tokens fed)."""

    def __init__(self, interrupt_after: int | None = None, interrupt: threading.Event | None = None) -> None:
        self.steps: list[tuple[list[int], list[int]]] = []
        self.interrupt_after = interrupt_after
        self.interrupt = interrupt

    def __call__(self, rids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        self.steps.append((list(rids), list(tokens)))
        rows = np.zeros((len(rids), VOCAB), dtype=np.float32)
        for i, (rid, token) in enumerate(zip(rids, tokens, strict=True)):
            rows[i, (token + rid) % VOCAB] = 1.0  # each sequence counts up by its id
        if self.interrupt is not None and len(self.steps) == self.interrupt_after:
            self.interrupt.set()  # as a newcomer's arrival would, during this step
        return rows


def lane(rid: int, token: int, room: int = 100, ends: frozenset[int] = frozenset()) -> Lane:
    return Lane(rid, token, lambda row: int(np.argmax(row)), room, ends)


def test_each_lane_stops_at_its_end_token_or_its_room_and_the_others_go_on() -> None:
    decode = Script()
    a, b, c = lane(1, 0, room=3), lane(2, 0, ends=frozenset({6})), lane(3, 0, room=5)
    run_ahead.run(run_ahead.without_drafts(decode), [a, b, c], threading.Event(), budget_ms=60_000)
    assert a.chosen == [1, 2, 3]  # its room
    assert b.chosen == [2, 4, 6]  # the end token is chosen (the actor ends it there)
    assert c.chosen == [3, 6, 9, 12, 15]
    # Every step fed each lane's last choice; an ended lane leaves the batch.
    assert decode.steps[0] == ([1, 2, 3], [0, 0, 0])
    assert decode.steps[1] == ([1, 2, 3], [1, 2, 3])
    assert decode.steps[3] == ([3], [9])
    assert len(decode.steps) == 5
    # What went into the KV: all but the last choice of each.
    assert a.fed == [1, 2] and c.fed == [3, 6, 9, 12]


def test_a_run_ends_at_the_step_after_an_interrupt() -> None:
    interrupt = threading.Event()
    decode = Script(interrupt_after=2, interrupt=interrupt)
    only = lane(1, 0)
    run_ahead.run(run_ahead.without_drafts(decode), [only], interrupt, budget_ms=60_000)
    assert len(decode.steps) == 2 and only.chosen == [1, 2]


def test_the_first_step_always_runs_and_a_spent_budget_ends_the_run_there() -> None:
    decode = Script()
    interrupt = threading.Event()
    interrupt.set()  # set before the run: still the step the planner asked for
    first = lane(1, 0)
    run_ahead.run(run_ahead.without_drafts(decode), [first], interrupt, budget_ms=60_000)
    assert first.chosen == [1]
    second = lane(1, 0)
    run_ahead.run(run_ahead.without_drafts(decode), [second], threading.Event(), budget_ms=0)
    assert second.chosen == [1]


class DraftScript:
    """`Script`'s sequences through `decode_drafts`: each fed token gets a row; it keeps
    each sequence's KV length as fed and trimmed."""

    def __init__(self) -> None:
        self.steps = 0
        self.kv: dict[int, int] = {}

    def __call__(self, rids: Sequence[int], tokens: Sequence[int], drafts: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self.steps += 1
        out = []
        for rid, token, draft in zip(rids, tokens, drafts, strict=True):
            fed = [token, *draft]
            rows = np.zeros((len(fed), VOCAB), dtype=np.float32)
            rows[np.arange(len(fed)), [(t + rid) % VOCAB for t in fed]] = 1.0
            self.kv[rid] = self.kv.get(rid, 0) + len(fed)
            out.append(rows)
        return out

    def trim(self, rid: int, drop: int) -> None:
        self.kv[rid] -= drop


def test_verified_drafts_give_the_same_tokens_in_fewer_steps_and_exact_kv() -> None:
    plain = lane(1, 0, room=40)
    run_ahead.run(run_ahead.without_drafts(Script()), [plain], threading.Event(), budget_ms=60_000)
    truth = [i % VOCAB for i in range(60)]  # the reply: the first token (0), then the run's
    for corrupt, fewer in ((frozenset(), True), (frozenset(range(0, 60, 3)), False)):
        spec = Speculation(OracleDrafter(truth, corrupt))
        spec.settle((), (0,))  # the first token, as the actor records it
        fast = Lane(1, 0, lambda row: int(np.argmax(row)), 40, frozenset(), spec=spec)
        script = DraftScript()
        run_ahead.run(script, [fast], threading.Event(), budget_ms=60_000, trim=script.trim, row_budget=8)
        assert fast.chosen == plain.chosen
        assert script.kv[1] == len(fast.chosen)  # the first token and every kept one but the last
        assert spec.proposed > 0
        if fewer:
            assert script.steps < len(plain.chosen) // 3 and spec.accepted == spec.proposed
