"""The device's schedule as a pure function: from the sequences' states, what the backend
can do and what forwards cost lately, the next step to run. Nothing here touches a
backend, a thread or a socket (and nothing imports torch), so the policy can be read and
tested on its own; the device actor runs the plans.

The policy, in short: a decode step for every sequence whose next token is known,
alternating with prefill work so running streams keep moving while prompts go in.
Newcomers' short prompts go whole: where the backend can mix prompt and decode tokens in
a forward, a lead group together in a forward of its own and the rest riding whole,
together, in the running streams' next decode step (`lead_group`); elsewhere all
together in one forward. A long prompt goes in chunks sized to cost about one decode step, riding
inside the decode step where the backend can. Admission is fair across clients
(`FairQueue`), and nothing is evicted here (a KV pool's limits are kv_room.py's): a
device whose KV does not survive a switch simply runs one at a time. An idle device first waits a moment for a burst of newcomers
still on their way (`gather_until`), until its lead group (or, without mixed steps, the
whole burst) is there."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from axchat.actors.device.prompt_chunks import ChunkSizer
from axchat.actors.device.sequence import DeviceSequence, SeqState

# A prompt whose new (uncached) part is at most this many tokens goes in one forward,
# whatever the backend's chunk: a chat turn or a short question then costs one prefill,
# not a string of small chunks each queued behind a decode step (which, measured with
# bench/concurrency.py, cut 8 clients' aggregate rate by a third on a slow CPU). Longer
# prompts go in the backend's step-sized chunks so other streams keep moving.
WHOLE_PROMPT = 128
# Newcomers' whole prompts go in one forward together (backends with `prefill_rows`),
# up to this many tokens counting the padding to the longest: starting them together
# puts them in the same decode batch from their first token on, where one by one the
# first ones would decode alone, paying each later prompt's forward between their
# tokens. The bound keeps the pause it makes in running streams to a few prompts' worth;
# with no stream running there is nobody to pause, and the group is bounded by rows alone.
GROUP_TOKENS = 512
# How long an idle device waits for prompts the tokenizer says are still being encoded
# (a burst of clients), so that they go in the first forward with the first one (with
# mixed steps, until the lead group is there: `lead_group`). Measured
# with bench/concurrency.py (8 clients, llama.cpp, 2 cores): starting the first prompt
# alone made the other seven wait for its forward and then paused its stream for theirs.
GATHER_S = 0.1
# A burst reaches the tokenizer in batches (the front door reads a few frames at a time),
# so "none left encoding" can be said while the next batch is a fraction of a millisecond
# behind: with two or more newcomers, an idle device also waits until none has come for
# this long. A lone newcomer waits LONE_SHARE of what its own prefill is expected to
# take (from the prefills measured so far), at most QUIET_S: with 8 clients sending at
# once the first prompt was often admitted alone, 1-5 ms before the rest, and prefilled
# alone (0.2-0.6 s for 69 tokens on one core) while the other seven waited behind it.
QUIET_S = 0.02
LONE_SHARE = 0.05
# A long prompt's chunk when no other stream is decoding: nobody waits on it, so it goes
# in large pieces (with others decoding, ChunkSizer sizes each chunk like their step).
ALONE_CHUNK = 256


class BackendCapabilities(Protocol):
    """What the planner reads of `backends.base.Capabilities` (named here so that the
    planner needs no backend module)."""

    @property
    def max_batch(self) -> int: ...
    @property
    def kv_survives_switch(self) -> bool: ...
    @property
    def prefill_chunk(self) -> int | None: ...
    @property
    def prefix_cache(self) -> bool: ...
    @property
    def prefill_rows(self) -> int: ...
    @property
    def mixed_steps(self) -> bool: ...


@dataclass(frozen=True)
class StepLimits:
    """The backend's capabilities as the planner uses them."""

    max_batch: int  # sequences one decode step advances
    prefill_chunk: int | None = None  # None: every prompt goes whole (static shapes)
    prefix_cache: bool = False  # a sequence starts by restoring its cached prefix
    prefill_rows: int = 1  # newcomers' prompts one forward can take together
    mixed_steps: bool = False  # a decode step can carry a prompt chunk
    kv_survives_switch: bool = True  # False: one sequence holds the device at a time

    @classmethod
    def of(cls, caps: BackendCapabilities) -> StepLimits:
        return cls(
            max_batch=caps.max_batch,
            prefill_chunk=caps.prefill_chunk,
            prefix_cache=caps.prefix_cache,
            prefill_rows=caps.prefill_rows,
            # Only a chunked backend has chunks to carry.
            mixed_steps=caps.mixed_steps and caps.prefill_chunk is not None,
            kv_survives_switch=caps.kv_survives_switch,
        )

    def running_limit(self, asked: int | None = None) -> int:
        """How many sequences may hold a slot at once: `asked` (the operator's
        `--max-running`), at most what the device can batch; a device that loses KV
        when another sequence runs can only hold one."""
        limit = self.max_batch if self.kv_survives_switch else 1
        return min(asked or limit, limit)

    def chunk_sizer(self) -> ChunkSizer | None:
        """The run-time chunk sizing for this backend; None when prompts go whole."""
        if self.prefill_chunk is None:
            return None
        return ChunkSizer(self.prefill_chunk, max(self.prefill_chunk, ALONE_CHUNK))


# ------------------------------------------------------------------ plans


@dataclass(frozen=True)
class Restore:
    """Give each sequence its KV, with the longest cached prefix of its prompt
    (`backend.start`); only then is it known how much prompt is left, so plan again."""

    seqs: tuple[DeviceSequence, ...]


@dataclass(frozen=True)
class PrefillGroup:
    """The rest of each newcomer's (short) prompt, in one forward (`extend_batch`)."""

    seqs: tuple[DeviceSequence, ...]


@dataclass(frozen=True)
class PrefillPiece:
    """`seq`'s prompt up to `end` in a forward of its own: all of what is left
    (`whole`), or a long prompt's next chunk."""

    seq: DeviceSequence
    end: int
    whole: bool


@dataclass(frozen=True)
class Decode:
    """One token for each of `seqs`."""

    seqs: tuple[DeviceSequence, ...]


@dataclass(frozen=True)
class DecodeWithPrompts:
    """A decode step for `seqs` carrying each of `riders`' prompt up to its `ends` in the
    same forward (`decode_and_extend`): newcomers' short prompts whole, or one long
    prompt's next chunk. `step_ms`: the decode step's recent cost a chunk was sized
    against (None before any was measured)."""

    seqs: tuple[DeviceSequence, ...]
    riders: tuple[DeviceSequence, ...]
    ends: tuple[int, ...]
    step_ms: float | None


@dataclass(frozen=True)
class Wait:
    """Nothing yet: an idle device waits until `until` (or the next arrival, whichever
    comes first) for newcomers on their way, then plans again."""

    until: float


Forward = PrefillGroup | PrefillPiece | Decode | DecodeWithPrompts  # a forward that feeds tokens
Plan = Wait | Restore | Forward
# Plans that put prompt in rather than advance streams: the next turn goes to decoding.
PREFILL_PLANS = (PrefillGroup, PrefillPiece)


@dataclass(frozen=True)
class Arrivals:
    """What the device knows of newcomers still on their way, in the clock's seconds."""

    now: float
    more_coming: int  # prompts the tokenizer was still encoding at the latest admission
    last_admit: float  # when the latest newcomer was admitted
    waiting_since: float | None  # when this wait for them began; None: not waiting yet
    prefill_ms_per_token: float | None  # whole prompts' recent cost; None before any
    slots: int  # sequences that may run at once (the operator's `--max-running`)
    gather_s: float = GATHER_S  # the longest an announced burst is waited for
    waiting: int = 0  # admitted to the device but not running yet (came during a restore)


# ------------------------------------------------------------------ planning


def admissions(waiting_in_order: Iterable[DeviceSequence], running: int, limit: int) -> list[DeviceSequence]:
    """Who leaves the waiting line for a slot now: the first of the line (in the fair
    queue's order) while slots are free."""
    free = max(limit - running, 0)
    taken: list[DeviceSequence] = []
    for seq in waiting_in_order:
        if len(taken) >= free:
            break
        taken.append(seq)
    return taken


def may_run_ahead(step: Sequence[DeviceSequence], *, running: int, waiting: int) -> bool:
    """Whether a decode step for `step` may go on as a run of steps on the device thread
    (run_ahead.py): every one of the `running` streams is in it and greedy, none is
    ending, and nobody of the `waiting` line needs a slot. The steps after this one then
    need nothing from the loop."""
    return (
        len(step) == running
        and not waiting
        and all(s.greedy is not None and s.pending_end is None for s in step)
    )


def decode_next_after(plan: Plan, decode_next: bool) -> bool:
    """Whose turn the step after `plan` is: after prompt went in, the running streams'
    (a decode step), so they keep moving while prompts go in; after a decode step,
    prompts may go again. A wait or a restore feeds nothing and leaves the turn as it was."""
    if isinstance(plan, PREFILL_PLANS):
        return True
    if isinstance(plan, (Decode, DecodeWithPrompts)):
        return False
    return decode_next


def whole_prompt(seq: DeviceSequence, limits: StepLimits) -> bool:
    """Its prompt, less the cached prefix, goes in one forward (not in chunks)."""
    return limits.prefill_chunk is None or len(seq.prompt_ids) - seq.cached_tokens <= WHOLE_PROMPT


def next_step(
    running: Sequence[DeviceSequence],
    limits: StepLimits,
    *,
    decode_next: bool,
    recent_step_ms: float | None,
    chunks: ChunkSizer | None,
    arrivals: Arrivals | None = None,
) -> Plan | None:
    """The next step for the running sequences (in admission order); None when none
    can run now. `decode_next`: the last step put prompt in, so decoding has its turn;
    `recent_step_ms`: the latest decode steps' cost; `chunks`: the chunk sizer (read,
    never changed here); `arrivals`: newcomers on their way (None: never wait for any)."""
    prefilling = [s for s in running if s.state is SeqState.PREFILL]
    # Decode only once every running sequence has its next token: stepping the first
    # one back from the sampler alone would split the batch into singles.
    sampling = any(s.state is SeqState.SAMPLING for s in running)
    ready = [] if sampling else [s for s in running if s.state is SeqState.READY]
    if prefilling and not (ready and decode_next):
        until = gather_until(running, limits, arrivals) if arrivals is not None else None
        if until is not None:
            return Wait(until)
        if limits.prefill_rows > 1:
            # Short prompts first: one goes in a forward, where a long one would hold
            # them for all of its chunks. What is short is known once prefixes are back.
            fresh = tuple(s for s in prefilling if not s.started)
            if fresh:
                return Restore(fresh)
            rows = limits.prefill_rows
            short = sum(whole_prompt(s, limits) for s in prefilling)
            if limits.mixed_steps and short:
                streams = len(running) - len(prefilling)
                if arrivals is not None and not streams:
                    rows = min(rows, announced_lead(short, arrivals, limits))
                else:
                    rows = min(rows, lead_group(short, 0, streams))
                if not rows and sampling:
                    return None  # they ride in the streams' next step, the sampler's reply away
                if not ready:
                    rows = max(rows, 1)  # no step to ride in (grammars compiling): go alone
            group = prefill_group(prefilling, limits, others_running=len(prefilling) != len(running), rows=rows)
            if len(group) > 1:
                return PrefillGroup(tuple(group))
            if group:
                return _piece(group[0], running, limits, recent_step_ms, chunks)
        # Only long prompts left. With streams to decode, and a backend that can, a
        # chunk rides in their decode step (below); else it takes a forward alone.
        if not (ready and limits.mixed_steps):
            return _piece(prefilling[0], running, limits, recent_step_ms, chunks)
    if ready:
        batch = tuple(ready[: limits.max_batch])
        fresh = tuple(s for s in prefilling if not s.started)
        if limits.mixed_steps and fresh:
            return Restore(fresh)  # newcomers of the last moment ride in this step too
        riders = [s for s in prefilling if s.started]
        if limits.mixed_steps and riders:
            # Newcomers' short prompts ride whole, all in one step (bounded like a group
            # that pauses streams), before a long prompt's next chunk: the streams carry
            # as much as one a step, and no rider ends in a batch the others have left.
            whole = prefill_group(riders, limits)
            if whole:
                return DecodeWithPrompts(batch, tuple(whole), tuple(len(s.prompt_ids) for s in whole), recent_step_ms)
            assert chunks is not None  # mixed steps imply a chunked backend
            long = riders[0]
            end = min(len(long.prompt_ids), long.prefilled + chunks.next(recent_step_ms or 0.0))
            return DecodeWithPrompts(batch, (long,), (end,), recent_step_ms)
        return Decode(batch)
    return None


def lead_group(newcomers: int, coming: int, streams: int) -> int:
    """How many newcomers' short prompts go in a forward of their own (backends with
    mixed steps), the rest riding whole together in the decode step after it: of the
    newcomers the running streams do not outnumber, the smallest group that holds the
    median one (half, plus one); 0: they all ride.

    The median newcomer's first token then comes out of that forward, after a little
    over half the burst's prompt work, where one forward of all of them makes every one
    wait for all of it. The prompts that ride are carried by the lead group's streams:
    each holds every running stream for a prompt's forward, so the more of them ride,
    the slower the first streams' replies go next to the last ones'. Half the burst
    first, the rest one a step, brought the median first token a few hundredths of the
    burst's prefill sooner, but the first streams carried a third more prompt work and
    the last riders ended in a shrinking batch: per-client max/min 1.25 against 1.15
    (bench/burst_order.py measures the orders side by side). `coming`: prompts still on
    their way to an idle device."""
    outnumbering = newcomers + coming - streams
    return outnumbering // 2 + 1 if outnumbering > 0 else 0


def announced_lead(newcomers: int, arrivals: Arrivals, limits: StepLimits) -> int:
    """An idle device's lead group for `newcomers` and the rest of their burst. While the
    tokenizer says prompts are being encoded, more may follow (a burst reaches it in
    batches): the burst is taken to fill every slot. Once it says none are, the burst is
    what came, those waiting for the next step included."""
    full = min(limits.prefill_rows, arrivals.slots)
    burst = full if arrivals.more_coming > 0 else min(newcomers + arrivals.waiting, full)
    return lead_group(burst, 0, 0)


def gather_until(running: Sequence[DeviceSequence], limits: StepLimits, arrivals: Arrivals) -> float | None:
    """When an idle device stops waiting for newcomers on their way; None: go now.

    It waits for prompts the tokenizer is still encoding (up to `gather_s` from the
    start of the wait); else, with two or more newcomers, until none has come for
    QUIET_S; a lone newcomer for LONE_SHARE of its expected prefill (at most QUIET_S).
    Never while a stream decodes or a prompt is part fed (they would pay for the wait),
    nor when the group could not grow (rows or slots full, one row a forward)."""
    prefilling = [s for s in running if s.state is SeqState.PREFILL]
    busy = len(prefilling) != len(running) or any(s.started for s in prefilling)
    room = min(limits.prefill_rows, arrivals.slots) - len(prefilling)
    if not prefilling or busy or room <= 0 or limits.prefill_rows <= 1:
        return None
    # With mixed steps only the lead group goes first: the rest ride behind it as they come.
    lead = announced_lead(len(prefilling), arrivals, limits)
    if limits.mixed_steps and arrivals.more_coming > 0 and len(prefilling) >= lead:
        return None
    deadline = (arrivals.now if arrivals.waiting_since is None else arrivals.waiting_since) + arrivals.gather_s
    if arrivals.more_coming <= 0:
        if len(prefilling) > 1:
            quiet = QUIET_S
        else:
            new = len(prefilling[0].prompt_ids)  # the cached part is not known yet: an upper bound
            quiet = min(QUIET_S, LONE_SHARE * (arrivals.prefill_ms_per_token or 0.0) * new / 1e3)
        deadline = min(deadline, arrivals.last_admit + quiet)
    return deadline if arrivals.now < deadline else None


def prefill_group(
    prefilling: Sequence[DeviceSequence], limits: StepLimits, *, others_running: bool = True, rows: int | None = None
) -> list[DeviceSequence]:
    """Started sequences whose (uncached) prompts go whole in one forward together,
    oldest first, within `rows` (default: the backend's) and, while `others_running`
    (streams that the forward pauses), GROUP_TOKENS."""
    rows = limits.prefill_rows if rows is None else rows
    group: list[DeviceSequence] = []
    width = 0  # the longest piece in the group: every row is padded to it
    for seq in prefilling:
        # A long prompt's last chunk is not a short prompt: it keeps its own pace.
        if not whole_prompt(seq, limits):
            continue
        wider = max(width, seq.prompt_left)
        too_wide = others_running and wider * (len(group) + 1) > GROUP_TOKENS
        if len(group) >= rows or (group and too_wide):
            break
        group.append(seq)
        width = wider
    return group


def _piece(
    seq: DeviceSequence,
    running: Sequence[DeviceSequence],
    limits: StepLimits,
    recent_step_ms: float | None,
    chunks: ChunkSizer | None,
) -> Restore | PrefillPiece:
    if not seq.started and limits.prefix_cache:
        return Restore((seq,))
    total = len(seq.prompt_ids)
    if whole_prompt(seq, limits):
        return PrefillPiece(seq, total, whole=True)
    assert chunks is not None
    # Sized like the step of the streams decoding beside it; alone, in large pieces.
    decoding = any(s is not seq and s.decoding for s in running)
    size = chunks.next(recent_step_ms if decoding else None)
    return PrefillPiece(seq, min(total, seq.prefilled + size), whole=False)
