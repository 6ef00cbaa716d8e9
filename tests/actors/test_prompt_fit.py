"""Trimming and the cheap length bound, with the tiny model's real tokenizer: the same
turns are dropped as re-tokenizing after every drop would, and the tokenizer's work for
an 800 KB conversation is bounded by the context, not by the request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from axchat.actors.prompt_fit import PromptFitter, PromptTooLong, longest_token_chars, split_turns
from axchat.protocol.v1 import ChatMessage

CONTEXT = 256


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from axchat.actors.tokenizer import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


class CountingFitter:
    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.chars_encoded = 0
        self.fitter = PromptFitter(
            self.encode, self.render, context_length=CONTEXT, max_token_chars=longest_token_chars(tok)
        )
        self.chars_encoded = 0  # not counting the template probe at start-up

    def encode(self, text: str) -> list[int]:
        self.chars_encoded += len(text)
        return self.tok.encode(text, add_special_tokens=False)

    def render(self, messages: list[ChatMessage]) -> str:
        convo = [{"role": msg.role, "content": msg.content} for msg in messages]
        return self.tok.render_chat(convo, add_generation_prompt=True)


def drop_one_turn_at_a_time(c: CountingFitter, messages: list[ChatMessage], limit: int) -> tuple[list[int], int]:
    """The old quadratic trimming, as the reference for which turns go."""
    system, turns = split_turns(messages)
    dropped = 0
    ids = c.encode(c.render(messages))
    while len(turns) > 1 and len(ids) > limit:
        dropped += len(turns.pop(0))
        ids = c.encode(c.render(system + [m for t in turns for m in t]))
    return ids, dropped


def conversation(turns: int, words: int, system: bool = True) -> list[ChatMessage]:
    msgs = [ChatMessage(role="system", content="You are terse.")] if system else []
    for i in range(turns):
        msgs.append(ChatMessage(role="user", content=f"question {i} " + "about the weather " * (words + i % 3)))
        msgs.append(ChatMessage(role="assistant", content=f"answer {i} " + "it rains " * words))
    msgs.append(ChatMessage(role="user", content="and the last one?"))
    return msgs


@pytest.mark.parametrize(
    ("turns", "words", "system", "limit"),
    [(3, 2, True, 224), (12, 4, True, 224), (30, 1, False, 200), (8, 20, True, 128)],
)
def test_drops_the_same_turns_as_re_tokenizing_after_each_drop(
    tok: Any, turns: int, words: int, system: bool, limit: int
) -> None:
    c = CountingFitter(tok)
    msgs = conversation(turns, words, system)
    want_ids, want_dropped = drop_one_turn_at_a_time(c, msgs, limit)
    got = c.fitter.fit_chat(msgs, limit)
    assert (got.ids, got.dropped_messages) == (want_ids, want_dropped)


def test_tokenizer_work_for_a_huge_conversation_is_bounded_by_the_context(tok: Any) -> None:
    c = CountingFitter(tok)
    # 120 turns, about 800 KB: what once took 21 s of tokenizing.
    msgs = conversation(60, 490)
    size = sum(len(m.content) for m in msgs)
    assert size > 780_000
    got = c.fitter.fit_chat(msgs, CONTEXT - 32)
    assert len(got.ids) <= CONTEXT - 32 and got.dropped_messages > 0 and got.dropped_messages % 2 == 0
    # Each kept message once, a few checks of what is kept: a small multiple of what fits.
    assert c.chars_encoded < 8 * CONTEXT * longest_token_chars(tok)
    assert c.chars_encoded < size / 20


def test_a_prompt_that_cannot_fit_is_refused_before_any_tokenizing(tok: Any) -> None:
    c = CountingFitter(tok)
    huge = [ChatMessage(role="user", content="x" * (CONTEXT * longest_token_chars(tok)))]
    with pytest.raises(PromptTooLong) as info:
        c.fitter.fit_chat(huge, CONTEXT - 32)
    assert info.value.min_tokens >= CONTEXT
    with pytest.raises(PromptTooLong):
        c.fitter.check_length(50_000_000)
    assert c.chars_encoded == 0


def test_the_length_bound_never_refuses_what_fits(tok: Any) -> None:
    """The bound is a floor: the densest text the vocabulary allows still passes it."""
    longest = max(tok.get_vocab(), key=len)
    text = tok.decode([tok.token_id(longest)]) * 10
    c = CountingFitter(tok)
    assert c.fitter.min_tokens(len(text)) <= len(c.encode(text))
