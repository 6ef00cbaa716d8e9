"""Short names for the small instruction models people run on small devices, and the
bundled demonstration model. Plain data: listing it imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUNDLED_NAME = "axchat-mini"
# Package data (pyproject.toml), so a wheel carries it; models/train_mini.py writes it.
BUNDLED_DIR = Path(__file__).with_name(BUNDLED_NAME)
REAL_MODEL_HINT = "axchat pull smollm2-360m, then axchat serve --model smollm2-360m"


@dataclass(frozen=True)
class CatalogModel:
    name: str
    hub_id: str
    licence: str
    approx_gb: float  # download size, for `axchat models`; `pull` asks the hub for the real one
    gated: bool = False  # the hub wants a logged-in user who accepted the licence (HF_TOKEN)


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0", 0.27),
        CatalogModel("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", "Apache-2.0", 0.72),
        CatalogModel("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "Apache-2.0", 3.4),
        CatalogModel("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", "Apache-2.0", 0.99),
        CatalogModel("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", "Apache-2.0", 3.1),
        CatalogModel("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 Community", 2.5, gated=True),
        CatalogModel("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 Community", 6.4, gated=True),
        CatalogModel("phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", "MIT", 7.6),
    )
}


def by_hub_id(hub_id: str) -> CatalogModel | None:
    """The catalog entry for a hub id, matched as the hub matches ids (case-insensitively)."""
    wanted = hub_id.lower()
    return next((m for m in CATALOG.values() if m.hub_id.lower() == wanted), None)
