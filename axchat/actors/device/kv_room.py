"""Forwards kept within the KV cells of a backend's pool (`Capabilities.kv_cells`).

llama.cpp holds every running sequence's KV in one pool of cells, sized by the memory
plan: it may hold fewer positions than `max_batch` whole contexts. A forward that needs
more cells than are free fails as a whole, for every sequence in it, so one user's long
prompt or long reply would cut off everyone decoding beside it. The device therefore
keeps each forward within the free cells (pure functions here; the actor acts on them):

- a prompt goes in only when all of what is left of it fits beside RESERVE cells for each
  decoding stream: newcomers wait, in their admission order, not the streams already
  answering;
- when the decoding streams have grown into the whole pool, a prompt that was part fed
  gives its cells back first (it is fed again later), then the newest streams are parked
  (their KV moved to host memory) until the step fits; the oldest stream is never
  parked, so the device always moves;
- parked streams come back, oldest first, as soon as they fit, before any newcomer's
  prompt goes in.

Nobody's request fails for want of cells: each sequence fits the pool alone (the pool
holds at least one context)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from axchat.actors.device.sequence import DeviceSequence, SeqState

# Cells kept free for each decoding stream when a prompt goes in: a few steps of growth
# before anyone must be parked, so a prompt is not fed only to be put back at once.
RESERVE = 16


def _kv_length(seq: DeviceSequence) -> int:
    """Positions of KV `seq` has, in the pool or parked: the prompt fed so far and every
    token fed after it."""
    return seq.prefilled + len(seq.fed)


def held(seq: DeviceSequence) -> int:
    """Cells `seq` holds in the pool now."""
    if not seq.started or seq.state is SeqState.PARKED:
        return 0
    return _kv_length(seq)


def free(pool: int, running: Sequence[DeviceSequence]) -> int:
    return pool - sum(held(s) for s in running)


def _reading(seq: DeviceSequence) -> bool:
    """Still reading its prompt (its state PREFILL: not in a forward, no token yet)."""
    return seq.state is SeqState.PREFILL


def _needs(seq: DeviceSequence) -> int:
    """Cells a prompt reader still takes: the rest of its prompt (all of it before it starts,
    as a restored prefix takes cells too)."""
    return len(seq.prompt_ids) - (seq.prefilled if seq.started else 0)


def _streams(running: Sequence[DeviceSequence]) -> int:
    """Decoding streams holding cells, for the reserve."""
    return sum(1 for s in running if not _reading(s) and s.state is not SeqState.PARKED and s.decoding)


def visible(running: Sequence[DeviceSequence], pool: int) -> list[DeviceSequence]:
    """`running` (in admission order) less those that cannot move until cells free up:
    parked streams, and prompt readers from the first whose prompt does not fit on (all
    of them while a parked stream waits to come back). The planner sees only these, and
    a run of steps (run_ahead.py) needs only these to be in it."""
    budget = free(pool, running)
    streams = _streams(running)
    reserve = RESERVE * streams if len(running) > 1 else 0
    blocked = any(s.state is SeqState.PARKED for s in running)
    out: list[DeviceSequence] = []
    for seq in running:
        if seq.state is SeqState.PARKED:
            continue
        if not _reading(seq):
            out.append(seq)
            continue
        need = _needs(seq)
        if blocked or need + reserve > budget:
            blocked = True
            continue
        budget -= need
        out.append(seq)
    return out


def returning(running: Sequence[DeviceSequence], pool: int) -> list[DeviceSequence]:
    """Parked streams that fit back now beside RESERVE cells for each decoding stream
    (itself included: back with less, it would be parked again at the next step), oldest
    first, none past the first that does not."""
    budget = free(pool, running)
    streams = _streams(running)
    out: list[DeviceSequence] = []
    for seq in running:
        if seq.state is not SeqState.PARKED:
            continue
        streams += 1
        need = _kv_length(seq)
        if need + RESERVE * streams > budget and (streams > 1 or need > budget):
            break
        budget -= need
        out.append(seq)
    return out


@dataclass(frozen=True)
class Making:
    """What makes room: prompt readers whose cells go back (`restart`), then streams whose
    KV goes to host memory (`park`)."""

    restart: tuple[DeviceSequence, ...] = ()
    park: tuple[DeviceSequence, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.restart or self.park)


def make_room(running: Sequence[DeviceSequence], pool: int, step: Sequence[DeviceSequence]) -> Making:
    """What frees enough cells for a decode step of `step` (one cell each); nothing when
    it fits. Part-fed prompt readers first, newest first; then the newest of `step`'s
    streams whose next token is known (never the oldest sequence holding cells), each of
    which also leaves the step."""
    short = len(step) - free(pool, running)
    if short <= 0:
        return Making()
    restart: list[DeviceSequence] = []
    for seq in reversed(running):
        if short <= 0:
            break
        if _reading(seq) and seq.started and held(seq):
            restart.append(seq)
            short -= held(seq)
    park: list[DeviceSequence] = []
    holders = [s for s in running if held(s)]
    oldest = holders[0] if holders else None
    for seq in reversed(step):
        if short <= 0:
            break
        if seq is not oldest and seq.state is SeqState.READY:
            park.append(seq)
            short -= held(seq) + 1  # its cells, and the one its row would have taken
    return Making(tuple(restart), tuple(park))


def unblock(running: Sequence[DeviceSequence], pool: int) -> tuple[DeviceSequence, ...]:
    """Part-fed prompt readers to put back when nothing else can move: no stream decodes
    or waits parked and the oldest prompt reader does not fit beside the newer ones' cells.
    Newest first, until it fits (alone it always does)."""
    if any(not _reading(s) for s in running):
        return ()
    readers = list(running)
    if not readers or visible(readers, pool)[:1] == readers[:1]:
        return ()
    short = _needs(readers[0]) - free(pool, readers)
    out: list[DeviceSequence] = []
    for seq in reversed(readers[1:]):
        if short <= 0:
            break
        if held(seq):
            out.append(seq)
            short -= held(seq)
    return tuple(out)
