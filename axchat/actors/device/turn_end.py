"""When a turn ends, and how long the reply is then: the one rule for an end-of-turn
token, the length limit, a stop string and a cancel. The device asks it for every token
it takes, the device thread for every token of a run ahead, and the tokenizer when a stop
string it found reaches it only after the device had already ended the turn."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from axchat.protocol.v1 import FinishReason


@dataclass(frozen=True)
class TurnEnd:
    """`reason`: how the turn ended, None while it goes on. `kept`: of the tokens
    offered, how many belong to the reply (an end-of-turn token does not, nor any after
    the end). `completion_tokens`: the reply's length in tokens, counting those kept."""

    reason: FinishReason | None
    kept: int
    completion_tokens: int


def end_of_turn(
    produced: int,
    tokens: Sequence[int] = (),
    *,
    ends: Collection[int] = frozenset(),
    limit: int | None = None,
    stop_at: int | None = None,
    cancel: FinishReason | None = None,
) -> TurnEnd:
    """The turn after `produced` reply tokens, offered `tokens` next.

    `ends`: end-of-turn ids (empty when the request ignores them); `limit`: the most
    reply tokens allowed (its max_tokens or the context's end); `stop_at`: the reply's
    token at which the tokenizer found a stop string; `cancel`: the reason of a cancel.
    A stop string found wins over everything else: its text was cut there, and tokens
    made after it (the device does not wait for the tokenizer) are neither shown nor
    counted. A cancel comes next; then each offered token in turn."""
    if stop_at is not None and produced >= stop_at:
        return TurnEnd("stop", 0, stop_at)
    if cancel is not None:
        return TurnEnd(cancel, 0, produced)
    for kept, token in enumerate(tokens):
        if token in ends:
            return TurnEnd("stop", kept, produced + kept)
        count = produced + kept + 1
        if stop_at is not None and count >= stop_at:
            return TurnEnd("stop", kept + 1, count)
        if limit is not None and count >= limit:
            return TurnEnd("length", kept + 1, count)
    return TurnEnd(None, len(tokens), produced + len(tokens))
