"""The KV pool's rules (kv_room.py) on their own: who waits, who is put back or parked,
who comes back. The daemon-level behaviour is in tests/daemon/test_kv_pool.py."""

from __future__ import annotations

from test_device_planner import seq

from axchat.actors.device import kv_room
from axchat.actors.device.sequence import DeviceSequence, SeqState


def stream(rid: int, length: int, state: SeqState = SeqState.READY) -> DeviceSequence:
    """A decoding stream holding `length` cells (prompt 8, the rest fed after it)."""
    s = seq(rid, 8, state=state, started=True, prefilled=8)
    s.fed = [0] * (length - 8)
    return s


def test_a_prompt_goes_in_only_with_room_for_the_streams_to_grow() -> None:
    a = stream(1, 100)
    newcomer, later = seq(2, 50), seq(3, 1)
    pool = 100 + 50 + kv_room.RESERVE
    assert kv_room.visible([a, newcomer, later], pool) == [a, newcomer]  # the next one waits its turn
    assert kv_room.visible([a, newcomer, later], pool - 1) == [a]  # nobody jumps the line


def test_a_lone_prompt_needs_no_reserve() -> None:
    alone = seq(1, 64)
    assert kv_room.visible([alone], 64) == [alone]


def test_a_step_without_room_puts_back_a_part_fed_prompt_before_parking_anyone() -> None:
    a, b = stream(1, 40), stream(2, 40)
    reader = seq(3, 30, started=True, prefilled=19)
    making = kv_room.make_room([a, b, reader], 100, (a, b))
    assert (making.restart, making.park) == ((reader,), ())


def test_then_the_newest_stream_is_parked_never_the_oldest() -> None:
    a, b, c = stream(1, 40), stream(2, 30), stream(3, 30)
    making = kv_room.make_room([a, b, c], 100, (a, b, c))
    assert (making.restart, making.park) == ((), (c,))
    assert kv_room.make_room([a], 40, (a,)).park == ()  # alone it is never parked (it fits by its limit)


def test_a_parked_stream_comes_back_only_with_room_to_grow() -> None:
    a, b = stream(1, 40), stream(2, 30, SeqState.PARKED)
    assert kv_room.held(b) == 0 and kv_room.free(100, [a, b]) == 60
    assert kv_room.returning([a, b], 40 + 30 + 2 * kv_room.RESERVE) == [b]
    assert kv_room.returning([a, b], 40 + 30 + 2 * kv_room.RESERVE - 1) == []  # else parked again next step
    assert kv_room.visible([a, b, seq(3, 1)], 1000) == [a]  # it cannot move, and newcomers wait behind it


def test_prompt_readers_holding_each_others_cells_unblock_newest_first() -> None:
    first = seq(1, 80, started=True, prefilled=20)
    second, third = seq(2, 60, started=True, prefilled=30), seq(3, 60, started=True, prefilled=30)
    assert kv_room.unblock([first, second, third], 110) == (third,)
    assert kv_room.unblock([first, second, third], 100) == (third, second)
    assert kv_room.unblock([first, second], 110) == ()  # the oldest fits: nothing to undo
