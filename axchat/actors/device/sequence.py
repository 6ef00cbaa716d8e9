"""One request as the device sees it: where it stands (waiting, prefilling, in a forward,
with the sampler, ready for a decode step) and what it has fed and produced so far."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from axchat.actors import messages as m
from axchat.protocol.v1 import FinishReason, RequestInfo, Sampling

if TYPE_CHECKING:
    from axchat.actors.device.drafts import Speculation
    from axchat.actors.token_choice import SequenceSampler
    from axchat.actors.token_mask import ConstrainedChoice, TokenMask


class SeqState(enum.Enum):
    WAITING = "waiting"  # admitted, in line for a slot
    PREFILL = "prefill"  # has a slot, prompt not all fed yet
    COMPUTING = "computing"  # in a forward pass on the device thread
    SAMPLING = "sampling"  # logits are with the sampler
    GRAMMAR = "grammar"  # prompt in, its grammar's matcher still compiling: the others decode on
    READY = "ready"  # next token known, waiting for a decode step
    PARKED = "parked"  # next token known, its KV in host memory until the pool has room (kv_room.py)


@dataclass(eq=False)  # by identity: two requests are never the same one
class DeviceSequence:
    rid: int
    label: str
    client: str
    prompt_ids: list[int]
    sampling: Sampling
    eos_ids: frozenset[int]
    state: SeqState = SeqState.WAITING
    started: bool = False  # the backend holds KV for it (prefill or start has run)
    prefilled: int = 0  # prompt tokens in the device's KV so far (cached ones included)
    cached_tokens: int = 0  # of those, restored from the prefix cache
    fed: list[int] = field(default_factory=list)  # generated tokens fed back by decode steps
    next_token: int = -1
    completion_tokens: int = 0
    queue_position: int = 0
    # Set when a cancel or a stop string arrives during a forward pass: acted on when it returns.
    pending_end: FinishReason | None = None
    stop_at: int | None = None  # the reply's token at which the tokenizer found a stop string
    admitted_ns: int = field(default_factory=time.monotonic_ns)
    timings: m.DeviceTimings = field(default_factory=m.DeviceTimings)
    greedy: SequenceSampler | ConstrainedChoice | None = None  # set for greedy requests: sampled here, not by the sampler actor
    mask: TokenMask | None = None  # the grammar's mask, for a constrained request
    spec: Speculation | None = None  # a greedy request's proposals, where speculation is on

    @property
    def end_ids(self) -> frozenset[int]:
        """The ids that end its turn: none when the request ignores them."""
        return frozenset() if self.sampling.ignore_eos else self.eos_ids

    @property
    def prompt_left(self) -> int:
        """Prompt tokens not yet in the device's KV."""
        return len(self.prompt_ids) - self.prefilled

    @property
    def decoding(self) -> bool:
        """Its whole prompt is in: it produces tokens now."""
        return self.prefilled >= len(self.prompt_ids)

    def ended(self, reason: FinishReason, error: m.Failure | None, device: str) -> m.Ended:
        """What the device tells of it when it ends, served by `device`."""
        if self.spec is not None:
            self.timings.draft_proposed, self.timings.draft_accepted = self.spec.proposed, self.spec.accepted
        return m.Ended(
            rid=self.rid,
            reason=reason,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            timings=self.timings,
            error=error,
            device=device,
        )

    def info(self) -> RequestInfo:
        state: Literal["queued", "prefill", "decode"] = "decode"
        if self.state is SeqState.WAITING:
            state = "queued"
        elif self.prefilled < len(self.prompt_ids):
            state = "prefill"
        return RequestInfo(
            id=self.label,
            state=state,
            prompt_tokens=len(self.prompt_ids),
            prefilled_tokens=self.prefilled,
            completion_tokens=self.completion_tokens,
            max_tokens=self.sampling.max_tokens,
            queue_position=self.queue_position,
        )


def ms(ns: int) -> float:
    return ns / 1e6
