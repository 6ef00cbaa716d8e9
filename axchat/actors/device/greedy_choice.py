"""Who picks a sequence's tokens on the device, decided once at its first row: greedy
requests here (an argmax costs microseconds, the sampler actor's round trip about a
millisecond a token), under their grammar's mask when constrained; greedy streams
also propose tokens (drafts.py; a constrained one under its grammar: grammar_drafts.py)
where speculation is on. Sampled requests: the sampler actor, which `greedy` None says."""

from __future__ import annotations

from axchat.actors.device.drafts import ModelDrafter, Speculation, drafter_for
from axchat.actors.device.grammar_drafts import grammar_speculation
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
    if speculate is None:
        return
    if mask is not None:  # its grammar's forced tokens, then n-gram guesses (never a draft model's)
        seq.spec = grammar_speculation(drafter_for(seq.prompt_ids), mask)
    elif speculate == "draft":
        seq.spec = Speculation(ModelDrafter(seq.rid, seq.prompt_ids))
    else:
        seq.spec = Speculation(drafter_for(seq.prompt_ids))
