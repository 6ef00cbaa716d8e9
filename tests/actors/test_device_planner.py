"""The device's schedule as the planner decides it, from sequence states and backend
capabilities alone: no backend, no thread, no socket, and no torch in the process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from axchat.actors.device import planner
from axchat.actors.device.fair_queue import FairQueue
from axchat.actors.device.planner import (
    ALONE_CHUNK,
    GATHER_S,
    GROUP_TOKENS,
    LONE_SHARE,
    QUIET_S,
    WHOLE_PROMPT,
    Arrivals,
    Decode,
    DecodeWithPrompts,
    PrefillGroup,
    PrefillPiece,
    Restore,
    StepLimits,
    Wait,
)
from axchat.actors.device.prompt_chunks import ChunkSizer
from axchat.actors.device.sequence import DeviceSequence, SeqState
from axchat.actors.device.turn_end import TurnEnd, end_of_turn
from axchat.protocol.v1 import Sampling

HEAVY = ("torch", "transformers", "llama_cpp", "numpy", "zmq")

# The lean torch path's shape: batches of 4, chunked prompts that ride in decode steps.
LEAN = StepLimits(max_batch=4, prefill_chunk=64, prefix_cache=True, prefill_rows=4, mixed_steps=True)
# A card that holds one sequence and takes each prompt whole (the AIPU).
CARD = StepLimits(max_batch=1, prefill_chunk=None, kv_survives_switch=False)


def test_the_planner_and_these_tests_load_without_torch() -> None:
    """In a fresh interpreter (this one may have torch from other tests): importing this
    very module, and so the planner and everything it needs, loads none of them."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, __file__], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "", f"the planner pulled in: {out.stdout.strip()}"


def seq(rid: int, prompt: int, *, client: str | None = None, state: SeqState = SeqState.PREFILL,
        started: bool = False, prefilled: int = 0) -> DeviceSequence:
    s = DeviceSequence(rid, f"r{rid}", client or f"c{rid}", list(range(prompt)), Sampling(max_tokens=8), frozenset())
    s.state, s.started, s.prefilled = state, started, prefilled
    return s


def decoding(rid: int, state: SeqState = SeqState.READY) -> DeviceSequence:
    """A sequence past its prompt, its next token known (READY) or with the sampler."""
    return seq(rid, 8, state=state, started=True, prefilled=8)


def plan(running: list[DeviceSequence], limits: StepLimits = LEAN, *, decode_next: bool = False,
         step_ms: float | None = None, chunks: ChunkSizer | None = None,
         arrivals: Arrivals | None = None) -> planner.Plan | None:
    return planner.next_step(
        running, limits, decode_next=decode_next, recent_step_ms=step_ms,
        chunks=chunks if chunks is not None else limits.chunk_sizer(), arrivals=arrivals,
    )


def arrivals(now: float, *, more: int = 0, last_admit: float = 100.0, since: float | None = None,
             ms_per_token: float | None = None, slots: int = 4, waiting: int = 0) -> Arrivals:
    return Arrivals(now=now, more_coming=more, last_admit=last_admit, waiting_since=since,
                    prefill_ms_per_token=ms_per_token, slots=slots, waiting=waiting)


# ------------------------------------------------------------------ fairness


def test_admission_takes_turns_across_clients_in_the_fair_queues_order() -> None:
    line: FairQueue[DeviceSequence] = FairQueue()
    for s in [seq(1, 8, client="a"), seq(2, 8, client="a"), seq(3, 8, client="a"), seq(4, 8, client="b")]:
        s.state = SeqState.WAITING
        line.push(s)
    # Two slots free of four: a's first, then b's, although a sent three first.
    assert [s.rid for s in planner.admissions(line.in_order(), running=2, limit=4)] == [1, 4]
    assert planner.admissions(line.in_order(), running=4, limit=4) == []
    assert [s.rid for s in planner.admissions(line.in_order(), running=0, limit=8)] == [1, 4, 2, 3]


def test_every_ready_stream_is_in_the_decode_step() -> None:
    running = [decoding(1), decoding(2), decoding(3)]
    assert plan(running) == Decode(tuple(running))


def test_no_decode_while_a_stream_waits_for_its_token() -> None:
    """Stepping the others without it would split the batch into singles."""
    running = [decoding(1), decoding(2, SeqState.SAMPLING)]
    assert plan(running) is None


def test_prefill_and_decoding_take_turns() -> None:
    """A long prompt's chunk that cannot ride in a decode step alternates with them."""
    no_mixing = StepLimits(max_batch=4, prefill_chunk=64, prefill_rows=1, mixed_steps=False)
    long = seq(2, 600, started=True, prefilled=64)
    stream = decoding(1)
    assert isinstance(plan([stream, long], no_mixing, decode_next=False), PrefillPiece)
    assert plan([stream, long], no_mixing, decode_next=True) == Decode((stream,))


# ------------------------------------------------------------------ grouped prefill


# Rows for a burst of 8, as llama.cpp's backend has; and a backend of as many rows that
# cannot carry prompt in a decode step.
EIGHT = StepLimits(max_batch=8, prefill_chunk=64, prefix_cache=True, prefill_rows=8, mixed_steps=True)
UNMIXED = StepLimits(max_batch=8, prefill_chunk=64, prefill_rows=8, mixed_steps=False)


def test_newcomers_are_restored_then_prefilled_together() -> None:
    """Where a decode step cannot carry a prompt, newcomers' short prompts all go in one
    forward together."""
    stream = decoding(1)
    fresh = [seq(2, 30), seq(3, 11), seq(4, 50)]
    assert plan([stream, *fresh], UNMIXED) == Restore(tuple(fresh))
    for s in fresh:
        s.started = True  # prefix restore found nothing
    assert plan([stream, *fresh], UNMIXED) == PrefillGroup(tuple(fresh))


def test_a_burst_goes_past_its_median_together_then_the_rest_ride_whole_in_one_decode_step() -> None:
    burst = [seq(i, 60 + i, started=True) for i in range(1, 9)]
    # An idle device: the smallest group that holds the median newcomer (five of eight)
    # in a forward of its own.
    assert plan(burst, EIGHT) == PrefillGroup(tuple(burst[:5]))
    for s in burst[:5]:
        s.prefilled, s.state = len(s.prompt_ids), SeqState.READY
    # Five streams for three newcomers: the streams' next step carries all three whole
    # prompts, whichever way the turn stood.
    riders = tuple(burst[5:])
    ends = tuple(len(s.prompt_ids) for s in riders)
    for decode_next in (False, True):
        assert plan(burst, EIGHT, decode_next=decode_next, step_ms=30.0) == DecodeWithPrompts(
            tuple(burst[:5]), riders, ends, 30.0
        )
    # One that came during the lead group's forward gets its prefix back first, so that
    # it rides in the same step.
    late = seq(10, 66)
    assert plan([*burst, late], EIGHT, decode_next=True) == Restore((late,))
    # Newcomers' short prompts ride before a long prompt's next chunk.
    long = seq(9, 600, started=True, prefilled=64)
    assert plan([*burst, long], EIGHT) == DecodeWithPrompts(tuple(burst[:5]), riders, ends, None)
    # While a stream's token is with the sampler nothing decodes: the newcomers wait
    # for the step they will ride in, a reply away.
    burst[0].state = SeqState.SAMPLING
    assert plan(burst, EIGHT, decode_next=True) is None
    # With no stream able to step (their grammars still compiling), one goes alone
    # rather than wait with the device idle.
    for s in burst[:5]:
        s.state = SeqState.GRAMMAR
    assert plan([*burst[:6], long], EIGHT, decode_next=True) == PrefillPiece(burst[5], 66, whole=True)


def test_riders_in_one_step_are_bounded_like_a_group_that_pauses_streams() -> None:
    many = StepLimits(max_batch=16, prefill_chunk=64, prefix_cache=True, prefill_rows=16, mixed_steps=True)
    streams = [decoding(i) for i in range(1, 6)]
    width = 103  # four short prompts of this fit the budget; a fifth does not
    assert width <= WHOLE_PROMPT and 4 * width <= GROUP_TOKENS < 5 * width
    wide = [seq(i, width, started=True) for i in range(6, 11)]
    # As many newcomers as streams: none goes ahead, four ride in the streams' step.
    assert plan([*streams, *wide], many) == DecodeWithPrompts(tuple(streams), tuple(wide[:4]), (width,) * 4, None)


def test_newcomers_outnumbering_the_streams_send_a_lead_group_ahead() -> None:
    streams = [decoding(i) for i in (1, 2)]
    newcomers = [seq(i, 20, started=True) for i in range(3, 10)]
    # Seven newcomers, two streams: of the five the streams do not outnumber, the three
    # that hold the median one in a forward of their own; then the streams' step,
    # carrying the rest.
    assert plan([*streams, *newcomers], EIGHT) == PrefillGroup(tuple(newcomers[:3]))
    assert plan([*streams, *newcomers], EIGHT, decode_next=True) == DecodeWithPrompts(
        tuple(streams), tuple(newcomers), (20,) * 7, None
    )
    assert [planner.lead_group(n, 0, 0) for n in range(1, 9)] == [1, 2, 2, 3, 3, 4, 4, 5]
    assert planner.lead_group(4, 0, 4) == 0 and planner.lead_group(1, 7, 0) == 5


def test_a_group_is_bounded_by_padded_tokens_and_rows() -> None:
    many_rows = UNMIXED
    width = 120  # four rows padded to this fit the budget; a fifth does not
    assert width <= WHOLE_PROMPT and 4 * width <= GROUP_TOKENS < 5 * width
    stream = decoding(9)  # paused by the group's forward
    wide = [seq(i, width, started=True) for i in range(1, 7)]
    assert plan([stream, *wide], many_rows) == PrefillGroup(tuple(wide[:4]))
    # With no stream to pause, rows alone bound it.
    assert plan(wide, many_rows) == PrefillGroup(tuple(wide))
    two_rows = StepLimits(max_batch=4, prefill_chunk=64, prefill_rows=2)
    short = [seq(i, 8, started=True) for i in range(1, 5)]
    assert plan(short, two_rows) == PrefillGroup(tuple(short[:2]))


def test_a_short_prompt_goes_before_a_long_prompts_next_chunk() -> None:
    long = seq(1, 600, started=True, prefilled=ALONE_CHUNK)
    short = seq(2, 8, started=True)
    assert plan([long, short]) == PrefillPiece(short, 8, whole=True)


def test_a_mostly_cached_prompt_counts_as_short() -> None:
    s = seq(1, 600, started=True)
    s.prefilled = s.cached_tokens = 600 - WHOLE_PROMPT
    assert plan([s]) == PrefillPiece(s, 600, whole=True)


# ------------------------------------------------------------------ gathering a burst


def test_an_idle_device_waits_for_a_burst_the_tokenizer_announced() -> None:
    first = [seq(1, 20)]
    # Two more prompts still being encoded: wait for them up to GATHER_S from the start.
    assert plan(first, UNMIXED, arrivals=arrivals(100.0, more=2)) == Wait(100.0 + GATHER_S)
    assert plan(first, UNMIXED, arrivals=arrivals(100.05, more=1, since=100.0)) == Wait(100.0 + GATHER_S)
    # A burst that never arrives (rejected, say) delays the first only until then.
    assert plan(first, UNMIXED, arrivals=arrivals(100.0 + GATHER_S, more=1, since=100.0)) == Restore(tuple(first))


def test_with_mixed_steps_an_idle_device_waits_only_for_the_lead_group() -> None:
    """The rest of the burst rides behind the lead group as it comes. While prompts are
    announced, more may follow them: the lead group is that of a burst filling every
    slot (five of eight), not of the few announced so far."""
    first = [seq(1, 20)]
    assert plan(first, EIGHT, arrivals=arrivals(100.0, more=2, slots=8)) == Wait(100.0 + GATHER_S)
    half = [seq(i, 20) for i in range(1, 5)]
    # Four here and one announced: five known, whose lead group (three) is here, but the
    # burst may be larger yet.
    assert plan(half, EIGHT, arrivals=arrivals(100.0, more=1, slots=8)) == Wait(100.0 + GATHER_S)
    five = [*half, seq(5, 20)]
    assert plan(five, EIGHT, arrivals=arrivals(100.0, more=1, slots=8)) == Restore(tuple(five))
    six = [*five, seq(6, 20)]
    for s in six:
        s.started = True
    assert plan(six, EIGHT, arrivals=arrivals(100.0, more=1, slots=8)) == PrefillGroup(tuple(six[:5]))
    # Those that came while the group's prefixes were restored wait for the next step,
    # and are counted in the burst: five here and three waiting still make a group of five.
    done = arrivals(100.0, slots=8, waiting=3)
    assert plan(five, EIGHT, arrivals=done) == PrefillGroup(tuple(five))
    # With fewer slots, a full burst is smaller, and so is its lead group.
    pair = [seq(7, 20), seq(8, 20)]
    assert plan(pair, EIGHT, arrivals=arrivals(100.0, more=1, slots=3)) == Restore(tuple(pair))
    # Once none is announced, the burst is what came: after a quiet window, a group of
    # three holds the median of four.
    four = [seq(i, 20) for i in range(11, 15)]
    quiet = arrivals(100.0 + QUIET_S, last_admit=100.0, since=100.0, slots=8)
    assert plan(four, EIGHT, arrivals=quiet) == Restore(tuple(four))
    for s in four:
        s.started = True
    assert plan(four, EIGHT, arrivals=quiet) == PrefillGroup(tuple(four[:3]))


def test_after_a_burst_the_device_goes_once_none_has_come_for_a_quiet_window() -> None:
    burst = [seq(1, 20), seq(2, 30)]
    quiet_ends = 100.0 + QUIET_S
    assert plan(burst, arrivals=arrivals(100.005, since=100.0)) == Wait(quiet_ends)
    assert plan(burst, arrivals=arrivals(quiet_ends, since=100.0)) == Restore(tuple(burst))
    # The overall deadline still holds however the arrivals trickle in.
    late = arrivals(100.0 + GATHER_S, last_admit=100.0 + GATHER_S - 0.001, since=100.0)
    assert plan(burst, arrivals=late) == Restore(tuple(burst))


def test_a_lone_newcomer_waits_a_share_of_its_expected_prefill_at_most_the_quiet_window() -> None:
    lone = [seq(1, 20)]
    # 20 tokens at 10 ms each: a 200 ms prefill, of which it waits LONE_SHARE.
    expected = 100.0 + LONE_SHARE * 10.0 * 20 / 1e3
    assert expected < 100.0 + QUIET_S
    assert plan(lone, arrivals=arrivals(100.0, ms_per_token=10.0)) == Wait(expected)
    assert plan(lone, arrivals=arrivals(expected, ms_per_token=10.0, since=100.0)) == Restore(tuple(lone))
    # A long prompt's share is capped; before any prefill was measured it goes at once.
    long = [seq(1, 120)]
    assert plan(long, arrivals=arrivals(100.0, ms_per_token=10.0)) == Wait(100.0 + QUIET_S)
    assert plan(lone, arrivals=arrivals(100.0)) == Restore(tuple(lone))


def test_no_wait_while_a_stream_decodes_or_the_group_cannot_grow() -> None:
    announced = arrivals(100.0, more=3)
    stream, fresh = decoding(1), seq(2, 20)
    assert plan([stream, fresh], arrivals=announced) == Restore((fresh,))
    sampling = decoding(1, SeqState.SAMPLING)
    assert plan([sampling, fresh], arrivals=announced) == Restore((fresh,))
    part_fed = seq(3, 600, started=True, prefilled=ALONE_CHUNK)
    assert isinstance(plan([part_fed, seq(4, 20)], arrivals=announced), Restore)
    # Slots or rows full, or a backend that takes one prompt a forward: nothing to gain.
    full = [seq(i, 20) for i in range(1, 5)]
    assert plan(full, arrivals=announced) == Restore(tuple(full))
    assert plan([fresh], arrivals=arrivals(100.0, more=3, slots=1)) == Restore((fresh,))
    one_row = StepLimits(max_batch=4, prefill_chunk=64, prefill_rows=1)
    assert isinstance(plan([fresh], one_row, arrivals=announced), PrefillPiece)
    assert plan([fresh], CARD, arrivals=announced) == PrefillPiece(fresh, 20, whole=True)


# ------------------------------------------------------------------ chunks


def test_a_long_prompt_alone_goes_in_the_largest_chunks() -> None:
    long = seq(1, 600, started=True)
    assert plan([long]) == PrefillPiece(long, ALONE_CHUNK, whole=False)


def test_a_long_prompts_chunk_rides_in_the_decode_step_sized_like_it() -> None:
    chunks = LEAN.chunk_sizer()
    assert chunks is not None
    stream, long = decoding(1), seq(2, 600, started=True, prefilled=64)
    # Before any chunk was measured: the backend's own chunk.
    assert plan([stream, long], step_ms=40.0, chunks=chunks) == DecodeWithPrompts((stream,), (long,), (128,), 40.0)
    chunks.observe(64, 80.0)  # 1.25 ms a prompt token: a 40 ms step makes room for 32
    assert plan([stream, long], step_ms=40.0, chunks=chunks) == DecodeWithPrompts((stream,), (long,), (96,), 40.0)
    # The last chunk stops at the prompt's end.
    long.prefilled = 590
    assert plan([stream, long], step_ms=40.0, chunks=chunks) == DecodeWithPrompts((stream,), (long,), (600,), 40.0)


def test_an_unstarted_long_prompt_restores_its_prefix_first() -> None:
    one_row = StepLimits(max_batch=4, prefill_chunk=64, prefix_cache=True, prefill_rows=1)
    long = seq(1, 600)
    assert plan([long], one_row) == Restore((long,))
    without_cache = StepLimits(max_batch=4, prefill_chunk=64, prefill_rows=1)
    assert plan([long], without_cache) == PrefillPiece(long, ALONE_CHUNK, whole=False)


# ------------------------------------------------------------------ batch-1 devices


def test_a_card_holding_one_sequence_runs_one_at_a_time() -> None:
    assert CARD.running_limit() == 1 and CARD.running_limit(asked=8) == 1
    assert CARD.chunk_sizer() is None
    assert LEAN.running_limit() == 4 and LEAN.running_limit(asked=2) == 2
    # The whole prompt in one prefill, however long (static shapes), then single steps.
    s = seq(1, 900)
    assert plan([s], CARD) == PrefillPiece(s, 900, whole=True)
    stream = decoding(1)
    assert plan([stream], CARD) == Decode((stream,))


def test_capabilities_map_onto_limits() -> None:
    class Caps:
        max_batch, kv_survives_switch, prefill_chunk = 8, True, None
        prefix_cache, prefill_rows, mixed_steps = False, 1, True

    limits = StepLimits.of(Caps())
    # A backend that takes prompts whole has no chunk to carry in a decode step.
    assert limits.mixed_steps is False and limits.max_batch == 8
    assert plan([], limits) is None


def test_nothing_to_do_is_no_plan() -> None:
    assert plan([]) is None
    assert Path(planner.__file__).parent.name == "device"


# ------------------------------------------------------------------ turns and runs


def test_the_turn_after_a_prompt_goes_in_is_the_streams_and_after_a_decode_step_the_prompts() -> None:
    no_mixing = StepLimits(max_batch=4, prefill_chunk=64, prefill_rows=1, mixed_steps=False)
    stream, long = decoding(1), seq(2, 600, started=True, prefilled=64)
    decode_next = False
    taken = []
    for _ in range(4):  # the planner and the alternation, as the device drives them
        step = plan([stream, long], no_mixing, decode_next=decode_next)
        assert step is not None
        taken.append(type(step).__name__)
        decode_next = planner.decode_next_after(step, decode_next)
    assert taken == ["PrefillPiece", "Decode", "PrefillPiece", "Decode"]
    # A wait or a restore feeds nothing: the turn stays whose it was.
    assert planner.decode_next_after(Wait(1.0), True) is True
    assert planner.decode_next_after(Restore((long,)), False) is False
    assert planner.decode_next_after(PrefillGroup((long,)), False) is True
    assert planner.decode_next_after(DecodeWithPrompts((stream,), (long,), (128,), None), True) is False


def test_a_step_runs_ahead_only_with_every_stream_greedy_in_it_and_nobody_waiting() -> None:
    a, b = decoding(1), decoding(2)
    a.greedy = b.greedy = object()  # type: ignore[assignment]  # any picker: only its presence counts
    assert planner.may_run_ahead([a, b], running=2, waiting=0)
    assert not planner.may_run_ahead([a], running=2, waiting=0)  # b is not in this step
    assert not planner.may_run_ahead([a, b], running=2, waiting=1)  # someone needs a slot
    b.pending_end = "cancelled"
    assert not planner.may_run_ahead([a, b], running=2, waiting=0)  # b ends after this step
    b.pending_end, b.greedy = None, None
    assert not planner.may_run_ahead([a, b], running=2, waiting=0)  # b's tokens go to the sampler


def test_a_turn_ends_at_an_end_token_uncounted_or_at_its_limit_counted() -> None:
    assert end_of_turn(3, [5, 9, 6], ends={9}, limit=100) == TurnEnd("stop", 1, 4)
    assert end_of_turn(3, [5, 6, 7], ends={9}, limit=5) == TurnEnd("length", 2, 5)
    assert end_of_turn(3, [5, 6], ends={9}, limit=100) == TurnEnd(None, 2, 5)
    assert end_of_turn(0, [9], ends=frozenset(), limit=100).reason is None  # ignore_eos: no end ids


def test_a_stop_string_wins_and_nothing_after_it_is_counted() -> None:
    # Reported while the device had made more tokens: the reply is cut back to it.
    assert end_of_turn(7, stop_at=4) == TurnEnd("stop", 0, 4)
    assert end_of_turn(7, stop_at=4, cancel="cancelled") == TurnEnd("stop", 0, 4)
    # Found in tokens the device has yet to take: it ends there, before its limit.
    assert end_of_turn(2, [5, 6, 7], limit=100, stop_at=4) == TurnEnd("stop", 2, 4)


def test_a_cancel_ends_the_turn_with_what_it_has() -> None:
    assert end_of_turn(3, cancel="cancelled") == TurnEnd("cancelled", 0, 3)
    assert end_of_turn(3, [5], cancel="stop") == TurnEnd("stop", 0, 3)
