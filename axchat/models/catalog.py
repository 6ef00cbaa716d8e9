"""Short names for the small instruction models people run on small devices, and the
bundled demonstration model. Plain data: listing it imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUNDLED_NAME = "axchat-mini"
# Package data (pyproject.toml), so a wheel carries it; training/train_mini.py writes it.
BUNDLED_DIR = Path(__file__).with_name(BUNDLED_NAME)
REAL_MODEL_HINT = "axchat pull smollm2-360m, then axchat serve --model smollm2-360m"


@dataclass(frozen=True)
class CatalogModel:
    name: str
    hub_id: str
    licence: str
    approx_gb: float  # download size, for `axchat models`; `pull` asks the hub for the real one
    gated: bool = False  # the hub wants a logged-in user who accepted the licence (HF_TOKEN)
    # `axchat pull NAME --gguf`: a ready GGUF file ("org/repo/file.gguf"), q8_0 where offered.
    gguf: str | None = None


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0", 0.27,
            gguf="bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q8_0.gguf",
        ),
        CatalogModel("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", "Apache-2.0", 0.72),
        CatalogModel("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "Apache-2.0", 3.4),
        CatalogModel(
            "qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", "Apache-2.0", 0.99,
            gguf="Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q8_0.gguf",
        ),
        CatalogModel("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", "Apache-2.0", 3.1),
        CatalogModel(
            "llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 Community", 2.5, gated=True,
            gguf="bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q8_0.gguf",
        ),
        CatalogModel("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 Community", 6.4, gated=True),
        CatalogModel("phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", "MIT", 7.6),
    )
}


def by_hub_id(hub_id: str) -> CatalogModel | None:
    """The catalog entry for a hub id, matched as the hub matches ids (case-insensitively)."""
    wanted = hub_id.lower()
    return next((m for m in CATALOG.values() if m.hub_id.lower() == wanted), None)
