"""Fitting a request into the context with tokenizer work bounded by the context, not
by the request: a cheap length bound refuses what cannot fit before any tokenizing, and
trimming a long conversation tokenizes each message at most once, newest first, stopping
as soon as the kept turns fill the budget.

Why: one legal 800 KB conversation used to cost 20 s of re-tokenizing (the whole history
once per dropped turn), all of it in front of every other client's request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from axchat.protocol.v1 import ChatMessage

# Re-encodes of the kept turns allowed to correct the per-message estimate before the
# search for the turns to keep switches to bisection; each costs at most ~context tokens.
MAX_LINEAR_CORRECTIONS = 3


class PromptTooLong(Exception):
    """The request cannot fit in the context whatever is dropped; `min_tokens` is a
    proven lower bound on its size in tokens."""

    def __init__(self, min_tokens: int) -> None:
        super().__init__(min_tokens)
        self.min_tokens = min_tokens


@dataclass
class Fitted:
    ids: list[int]
    dropped_messages: int


def prompt_field(prompt: str | None) -> str:
    """The generate field that holds the prompt, as a refusal of it names it (`error.param`)."""
    return "prompt" if prompt is not None else "messages"


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters of input one token can stand for. Each vocabulary entry is
    spelled with at least one character per input character it covers (byte-level BPE:
    one per byte; SentencePiece: `▁` per space, `<0xNN>` for a byte), so the longest
    entry bounds it; special tokens are in the vocabulary too, and count."""
    try:
        # One entry at a time: a dict of the whole vocabulary would leave megabytes of
        # freed small objects behind in the daemon for good.
        entries = tokenizer.token_texts()
    except (AttributeError, NotImplementedError):
        return 0  # unknown: no cheap bound, every request is tokenized
    return max((len(entry) for entry in entries), default=0)


def min_tokens(chars: int, max_token_chars: int) -> int:
    """A lower bound on the tokens of `chars` characters of text (0 when unknown)."""
    return math.ceil(chars / max_token_chars) if max_token_chars > 0 else 0


@dataclass(frozen=True)
class LengthFloor:
    """A proven lower bound on a prompt's tokens from its length alone, before any
    tokenizer work: its characters over the longest vocabulary entry, plus the chat
    template's own tokens around each message (so 40,000 empty messages are refused as
    cheaply as one huge one). The front door and the tokenizer both judge by it."""

    max_token_chars: int  # 0: unknown, no bound from characters
    tokens_per_message: int = 0

    def of(self, chars: int, messages: int = 0) -> int:
        return min_tokens(chars, self.max_token_chars) + messages * self.tokens_per_message


def split_turns(messages: list[ChatMessage]) -> tuple[list[ChatMessage], list[list[ChatMessage]]]:
    """(the leading system message, if any; the turns: a user message and the replies
    after it, oldest first). Messages before the first user one make a turn of their own."""
    system = messages[:1] if messages and messages[0].role == "system" else []
    turns: list[list[ChatMessage]] = []
    for msg in messages[len(system) :]:
        if msg.role == "user" or not turns:
            turns.append([])
        turns[-1].append(msg)
    return system, turns


def kept_positions(roles: list[str]) -> list[int]:
    """Which messages trimming can never drop: the system prompt and the newest turn."""
    first = 1 if roles and roles[0] == "system" else 0
    last = len(roles) - 1
    while last > first and roles[last] != "user":
        last -= 1
    return [*range(first), *range(last, len(roles))]


def kept_chars(messages: list[ChatMessage]) -> int:
    """Characters of the messages trimming can never drop."""
    return sum(len(messages[i].content) for i in kept_positions([msg.role for msg in messages]))


class PromptFitter:
    """Turns a request into token ids that leave room for the reply, or refuses it."""

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        render: Callable[[list[ChatMessage]], str],
        *,
        context_length: int,
        max_token_chars: int,
    ) -> None:
        self._encode = encode
        self._render = render
        self._context = context_length
        self._overhead = self._template_overhead()
        # One token less than measured per message: a merge at the seam between the
        # template's text and a message's may save one, and the floor must stay proven.
        self.floor = LengthFloor(max_token_chars, max(0, self._overhead - 1))

    def min_tokens(self, chars: int) -> int:
        return self.floor.of(chars)

    def check_length(self, chars: int, messages: int = 0) -> None:
        """Raise PromptTooLong when a prompt this long (`messages` of them, for a chat)
        cannot fit, before tokenizing it."""
        floor = self.floor.of(chars, messages)
        if floor >= self._context:
            raise PromptTooLong(floor)

    def fit_chat(
        self, messages: list[ChatMessage], limit: int, render: Callable[[list[ChatMessage]], str] | None = None
    ) -> Fitted:
        """Drop the oldest whole turns (a user message and the replies after it) until
        the conversation leaves `limit` tokens free for the reply; the system prompt and
        the newest turn always stay."""
        system, turns = split_turns(messages)
        kept = system + turns[-1]
        self.check_length(kept_chars(messages), len(kept))

        # Estimate each turn's tokens from its messages alone, newest first, and stop at
        # the first turn that would overflow: nothing older is ever tokenized.
        budget = limit - sum(self._estimate(msg, limit) for msg in kept)
        first = len(turns) - 1
        while first > 0 and budget >= 0:
            cost = 0
            for msg in turns[first - 1]:
                cost += self._estimate(msg, budget - cost + 1)
                if cost > budget:
                    break
            if cost > budget:
                break
            budget -= cost
            first -= 1
        return self._settle(system, turns, first, limit, render or self._render)

    def _settle(
        self,
        system: list[ChatMessage],
        turns: list[list[ChatMessage]],
        first: int,
        limit: int,
        render: Callable[[list[ChatMessage]], str],
    ) -> Fitted:
        """The estimate is close, not exact (the template's own tokens, merges at the
        seams): check it with one encode of what is kept, then correct by whole turns."""

        def encode_from(start: int) -> list[int]:
            return self._encode(render(system + [msg for turn in turns[start:] for msg in turn]))

        def dropped(start: int) -> int:
            return sum(len(turn) for turn in turns[:start])

        ids = encode_from(first)
        if len(ids) <= limit:
            # The estimate may have dropped a turn too many; keep it if it fits after all.
            if first > 0:
                more = encode_from(first - 1)
                if len(more) <= limit:
                    return Fitted(more, dropped(first - 1))
            return Fitted(ids, dropped(first))
        # Too long: drop more, a turn at a time for a few tries, then by bisection.
        last = len(turns) - 1
        for _ in range(MAX_LINEAR_CORRECTIONS):
            if first >= last:
                return Fitted(ids, dropped(first))
            first += 1
            ids = encode_from(first)
            if len(ids) <= limit:
                return Fitted(ids, dropped(first))
        lo, hi = first, last  # lo does not fit; find the fewest turns dropped that do
        best = encode_from(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            mid_ids = encode_from(mid)
            if len(mid_ids) <= limit:
                hi, best = mid, mid_ids
            else:
                lo = mid
        return Fitted(best, dropped(hi))

    def _estimate(self, msg: ChatMessage, cap: int) -> int:
        """Tokens `msg` adds to a conversation; anything over `cap` is reported as
        `cap + 1` without tokenizing, when its length alone proves it."""
        floor = self.min_tokens(len(msg.content))
        if floor > cap:
            return cap + 1
        return len(self._encode(msg.content)) + self._overhead

    def _template_overhead(self) -> int:
        """The chat template's own tokens per message (role markers, separators)."""
        try:
            one = [ChatMessage(role="user", content="a")]
            three = [*one, ChatMessage(role="assistant", content="a"), ChatMessage(role="user", content="a")]
            per_message = (len(self._encode(self._render(three))) - len(self._encode(self._render(one)))) / 2
            return max(0, math.floor(per_message) - len(self._encode("a")))
        except Exception:  # a template that insists on its own shapes: estimate without it
            return 0
