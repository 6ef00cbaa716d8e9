"""Proposals for a constrained greedy stream: first the tokens its grammar forces next
(llguidance's fast-forward tokens: a property name, the punctuation between values),
then its drafter's guesses after them, cut at the first token the grammar refuses.

Forced tokens are surely right where the grammar's mask leaves one token (llguidance
forces a forced stretch's own tokenization), so the step's rule gives their rows first
and prices them as certain (speculation_plan.py); the guesses are priced by the stream's
recent acceptance of guesses alone. Verification is the free streams' (drafts.verify):
the mask after each proposed token is filled with the next token's, in the same trip
(token_mask.fill_together), and each row is chosen under its own position's mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from axchat.actors.device.drafts import Drafter, Speculation
from axchat.actors.device.speculation_plan import StreamOutlook
from axchat.actors.token_mask import TokenMask


@runtime_checkable
class Lookahead(Protocol):
    def propose_after(self, extra: Sequence[int], k: int) -> list[int]:
        """Up to `k` guesses for the tokens after those chosen so far and then `extra`."""


class GrammarDrafter:
    """A drafter under a grammar: the forced tokens, then `inner`'s guesses after them
    (a drafter that cannot guess past tokens not yet chosen guesses only where nothing
    is forced), each proposal expected by the stream's mask."""

    def __init__(self, inner: Drafter, mask: TokenMask) -> None:
        self._inner = inner
        self._mask = mask
        self._forced: list[int] | None = None  # for the matcher's present state

    def forced(self) -> list[int]:
        """The tokens the grammar forces next (computed once a state: the step's rule and
        the proposal both ask)."""
        if self._forced is None:
            mask = self._mask
            self._forced = [] if mask.failed is not None else list(mask.matcher.compute_ff_tokens())
        return self._forced

    def accept(self, tokens: Sequence[int]) -> None:
        self._forced = None
        self._inner.accept(tokens)

    def propose(self, k: int) -> list[int]:
        forced = self.forced()[:k]
        if not forced:
            guesses = self._inner.propose(k)
        elif len(forced) < k and isinstance(self._inner, Lookahead):
            guesses = self._inner.propose_after(forced, k - len(forced))
        else:
            guesses = []
        return self._mask.expect([*forced, *guesses])


@dataclass(eq=False)
class GrammarSpeculation(Speculation):
    """A constrained stream's speculation: its outlook counts the forced tokens as sure,
    and its acceptance estimate learns from its guesses only."""

    drafter: GrammarDrafter
    _sure: int = 0  # forced tokens leading the proposal in flight

    def outlook(self, room: int) -> StreamOutlook:
        plain = super().outlook(room)
        return replace(plain, sure=min(len(self.drafter.forced()), plain.most))

    def draft(self, k: int) -> list[int]:
        proposal = super().draft(k)
        self._sure = min(len(self.drafter.forced()), len(proposal))
        return proposal

    def settle(self, draft: Sequence[int], chosen: Sequence[int], sure: int = 0) -> None:
        super().settle(draft, chosen, sure=min(self._sure, len(draft)))
        self._sure = 0


def grammar_speculation(inner: Drafter, mask: TokenMask) -> GrammarSpeculation:
    return GrammarSpeculation(GrammarDrafter(inner, mask))
