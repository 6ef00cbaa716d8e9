"""Prompt text of a known size for the test tokenizer."""

from __future__ import annotations


def filler(n_words: int, salt: str = "") -> str:
    """Plain English-ish words the test tokenizer knows (about 1.7 tokens a word)."""
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "the",
        "river",
        "runs",
        "past",
        "an",
        "old",
        "mill",
        "and",
        "people",
        "talk",
        "about",
        "weather",
        "markets",
        "music",
        "gardens",
        "trains",
        "books",
        "and",
        "small",
        "boats",
        "on",
        "the",
        "lake",
    ]
    out = [salt] if salt else []
    out += [words[i % len(words)] for i in range(n_words)]
    return " ".join(out)
