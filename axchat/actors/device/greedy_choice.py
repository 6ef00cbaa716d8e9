"""Who picks a sequence's tokens on the device, decided once at its first row: greedy
requests here (an argmax costs microseconds, the sampler actor's round trip about a
millisecond a token), under their grammar's mask when constrained; free greedy streams
also propose tokens (drafts.py) where speculation is on. Sampled requests: the sampler
actor, which `greedy` None says."""

from __future__ import annotations

from axchat.actors.device.drafts import Speculation, drafter_for
from axchat.actors.device.sequence import DeviceSequence
from axchat.actors.token_choice import SequenceSampler
from axchat.actors.token_mask import ConstrainedChoice, TokenMask


def choose_chooser(seq: DeviceSequence, mask: TokenMask | None, speculate: str | None) -> None:
    """`speculate`: the mode greedy streams propose in ("ngram", "draft"), None for none."""
    sampler = SequenceSampler(seq.sampling, seq.prompt_ids)
    if not sampler.greedy:
        seq.greedy = None
        return
    seq.greedy = sampler if mask is None else ConstrainedChoice(sampler, mask)
    if mask is None and speculate is not None:  # a grammar's stream never proposes: its masks are per position
        seq.spec = Speculation(drafter_for(seq.rid, seq.prompt_ids, speculate))
