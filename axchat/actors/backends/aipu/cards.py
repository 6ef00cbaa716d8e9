"""Which Metis card a model runs on, chosen as the Voyager SDK's LLM runner chooses:
a selector (`--aipu-device`, else $AXELERA_DEVICE_SELECTOR) of indices or names, comma
separated; of those, the cards with the memory the model asks for; of those, the first
one no other process holds."""

from __future__ import annotations

import logging
import os

from axchat.actors.backends.aipu.runtime import (
    AipuError,
    BadDeviceSelector,
    CardInfo,
    CardInUse,
    CardTooSmall,
    NoCard,
    SdkConnection,
    SdkRuntime,
)

log = logging.getLogger(__name__)

SELECTOR_ENV = "AXELERA_DEVICE_SELECTOR"


def select_cards(cards: list[CardInfo], selector: str | None) -> list[CardInfo]:
    """The cards a selector names, in its order; every card when there is none."""
    selector = selector or os.environ.get(SELECTOR_ENV) or ""
    if not cards:
        raise NoCard(selector or None)
    if not selector.strip():
        return cards
    chosen = []
    for part in (p.strip() for p in selector.split(",")):
        if part.isdigit():
            if int(part) >= len(cards):
                raise BadDeviceSelector(selector, f"index {part} is out of range ({len(cards)} cards)")
            chosen.append(cards[int(part)])
            continue
        named = next((c for c in cards if c.name == part), None)
        if named is None:
            raise BadDeviceSelector(selector, f"no card named {part!r}; cards: {', '.join(c.name for c in cards)}")
        chosen.append(named)
    return chosen


def cards_with_memory(cards: list[CardInfo], need_gb: float, model: str) -> list[CardInfo]:
    """The cards with at least `need_gb` GiB, as the SDK compares (`max_memory >= gb * 2**30`).
    A card whose memory the runtime does not report is kept: refusing it would refuse
    every card of a release that leaves the field at 0."""
    fit = [c for c in cards if c.memory_gb is None or c.memory_gb >= need_gb]
    if not fit:
        raise CardTooSmall(model, need_gb, [(c.name, c.memory_gb or 0.0) for c in cards])
    for card in fit:
        if card.memory_gb is None:
            log.warning("%s does not report its memory; %s needs %g GB", card.name, model, need_gb)
    return fit


def connect_first_free(runtime: SdkRuntime, cards: list[CardInfo]) -> SdkConnection:
    """Connect to the first card no other process holds. A busy card, or one that fails
    to connect, falls through to the next; when all do, the error names each."""
    busy: list[str] = []
    failed: list[str] = []
    for card in cards:
        try:
            connection = runtime.connect(card)
        except CardInUse as exc:
            log.debug("%s", exc)
            busy.append(card.name)
            continue
        except AipuError as exc:
            log.warning("%s", exc)
            failed.append(str(exc))
            continue
        if busy or failed:
            log.info("using %s (%s)", card.name, "; ".join([*(f"{b} busy" for b in busy), *failed]))
        return connection
    if failed:
        raise AipuError("; ".join([*failed, *(f"{b} is in use by another process" for b in busy)]))
    raise CardInUse(busy)
