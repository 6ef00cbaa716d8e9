"""A long prompt's chunk is sized from measured costs: about one decode step of the
streams beside it, the largest when none is decoding."""

from __future__ import annotations

from axchat.actors.device.prompt_chunks import MIN_TOKENS, ROUND, ChunkSizer


def test_first_chunk_is_the_load_time_choice_then_follows_measured_costs() -> None:
    sizer = ChunkSizer(initial=32, alone=256)
    assert sizer.next(decode_step_ms=140.0) == 32
    sizer.observe(tokens=32, ms=32.0)  # 1 ms a prompt token
    assert sizer.next(decode_step_ms=140.0) == 140 // ROUND * ROUND == 136
    assert sizer.next(decode_step_ms=70.0) == 64  # a smaller batch: a smaller chunk
    sizer.observe(tokens=16, ms=48.0)  # deeper into the prompt: dearer tokens (3 ms; smoothed 2)
    assert sizer.next(decode_step_ms=140.0) == 64


def test_nobody_decoding_gets_the_largest_chunk_and_bounds_hold() -> None:
    sizer = ChunkSizer(initial=16, alone=256)
    sizer.observe(tokens=16, ms=16.0)  # 1 ms a token: a step's worth would be huge
    assert sizer.next(decode_step_ms=None) == 256
    assert sizer.next(decode_step_ms=10_000.0) == 256
    sizer.observe(tokens=8, ms=8_000.0)
    assert sizer.next(decode_step_ms=1.0) == MIN_TOKENS
    assert ChunkSizer(initial=4, alone=2).next(None) == MIN_TOKENS  # never below the minimum
