"""The Voyager SDK's precompiled Metis models, as plain data: `axchat models` lists them
without importing the SDK, numpy or the backend."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogModel:
    name: str
    tokenizer: str  # Hugging Face tokenizer id
    context: int
    cores: int
    card_gb: float  # smallest Metis card memory it fits

    @property
    def reply_reserve(self) -> int:
        return reply_reserve_for(self.context)


# The Voyager SDK's precompiled LLMs. Card sizes are what the SDK's model zoo asks for:
# the 3B and larger models do not fit a 4 GB card.
CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel("llama-3-2-1b-1024-4core-static", "meta-llama/Llama-3.2-1B-Instruct", 1024, 4, 4),
        CatalogModel("llama-3-2-3b-1024-4core-static", "meta-llama/Llama-3.2-3B-Instruct", 1024, 4, 16),
        CatalogModel("llama-3-1-8b-1024-4core-static", "meta-llama/Llama-3.1-8B-Instruct", 1024, 4, 16),
        CatalogModel("phi3-mini-512-static", "microsoft/Phi-3-mini-4k-instruct", 512, 1, 4),
        CatalogModel("phi3-mini-1024-4core-static", "microsoft/Phi-3-mini-4k-instruct", 1024, 4, 16),
        CatalogModel("phi3-mini-2048-4core-static", "microsoft/Phi-3-mini-4k-instruct", 2048, 4, 16),
        CatalogModel("velvet-2b-1024-4core-static", "Almawave/Velvet-2B", 1024, 4, 16),
    )
}


def reply_reserve_for(context: int) -> int:
    """Tokens kept free for the reply when trimming chat history, as the SDK does."""
    return 64 if context <= 512 else 128
