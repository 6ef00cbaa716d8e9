"""The actors a device talks to, by name: with several devices in one daemon each device
has its own name, and these stay shared (but status and ends go through the placer)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peers:
    tokenizer: str = "tokenizer"
    sampler: str = "sampler"
    reply: str = "reply"
    # Where its filled-in status goes: the reply stage, or a placer that sums several.
    status: str = "reply"
    # Who else hears every Ended (a placer: it frees the slot).
    ended: str | None = None
    # Who hears when keep-alive unloads the model and when it is back (a placer).
    residency: str | None = None


ONE_DEVICE = Peers()  # a daemon's lone device: no placer
