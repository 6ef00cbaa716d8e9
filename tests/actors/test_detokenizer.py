"""Incremental detokenization with the real tiny tokenizer, and stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest

from axchat.actors.detokenizer import REPLACEMENT, IncrementalDetokenizer, StopMatcher

TEXTS = [
    "héllo 日本 🙂 and more 🙂🙂 words",
    "plain ascii text, with punctuation!",
    "中文字符和 emoji 🎉 mixed",
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from axchat.actors.tokenizer import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.mark.parametrize("text", TEXTS)
def test_stream_reassembles_text_and_never_shows_half_a_character(tok, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt_ids=tok.encode("prompt: ", add_special_tokens=False))
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)


def test_the_test_text_really_splits_characters(tok) -> None:  # type: ignore[no-untyped-def]
    # Guards the test above: at least one token must be a fragment of a character.
    ids = tok.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1
    assert REPLACEMENT in tok.decode(ids[:1])


def test_flush_releases_an_unfinished_character(tok) -> None:  # type: ignore[no-untyped-def]
    ids = tok.encode("🙂", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt_ids=[])
    assert detok.push(ids[0]) == ""
    assert detok.flush() != ""


def test_stop_string_cut_and_held_back_text() -> None:
    stops = StopMatcher(["STOP", "\n\n"])
    assert stops.feed("hello S") == "hello "  # "S" could start STOP: held
    assert stops.feed("T") == ""
    assert stops.feed("OP and more") == ""
    assert stops.stopped
    assert stops.flush() == ""


def test_false_start_of_a_stop_string_is_released() -> None:
    stops = StopMatcher(["STOP"])
    assert stops.feed("ST") == ""
    assert stops.feed("AY") == "STAY"
    assert stops.feed(" x ST") == " x "
    assert stops.flush() == "ST"
    assert not stops.stopped


def test_stop_split_across_many_pieces_matches_whole_text_cut() -> None:
    text = "one two three four"
    stops = StopMatcher(["three"])
    out = "".join(stops.feed(c) for c in text) + stops.flush()
    assert out == text[: text.index("three")]


def test_no_stop_strings_pass_through() -> None:
    stops = StopMatcher([])
    assert stops.feed("abc") == "abc"
    assert stops.flush() == ""


def test_holding_says_when_a_character_is_unfinished(tok) -> None:  # type: ignore[no-untyped-def]
    ids = tok.encode("🙂", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt_ids=[])
    detok.push(ids[0])
    assert detok.holding
    for i in ids[1:]:
        detok.push(i)
    assert not detok.holding
