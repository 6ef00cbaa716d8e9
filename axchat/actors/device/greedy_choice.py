"""Who picks a sequence's tokens on the device, decided once at its first row: greedy
requests here (an argmax costs microseconds, the sampler actor's round trip about a
millisecond a token), under their grammar's mask when constrained; greedy streams
also propose tokens (drafts.py; a constrained one under its grammar: grammar_drafts.py)
where speculation is on. Sampled requests: the sampler actor, which `greedy` None says."""

from __future__ import annotations

from axchat.actors.device.drafts import Speculation, drafter_for
from axchat.actors.device.grammar_drafts import grammar_speculation
from axchat.actors.device.sequence import DeviceSequence
from axchat.actors.token_choice import SequenceSampler
from axchat.actors.token_mask import ConstrainedChoice, TokenMask


def choose_chooser(seq: DeviceSequence, mask: TokenMask | None, speculate: bool) -> None:
    sampler = SequenceSampler(seq.sampling, seq.prompt_ids)
    if not sampler.greedy:
        seq.greedy = None
        return
    seq.greedy = sampler if mask is None else ConstrainedChoice(sampler, mask)
    if speculate:
        drafter = drafter_for(seq.prompt_ids)
        seq.spec = Speculation(drafter) if mask is None else grammar_speculation(drafter, mask)
