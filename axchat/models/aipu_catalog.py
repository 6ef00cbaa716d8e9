"""The Voyager SDK's precompiled Metis models, as plain data: `axchat models` lists them
without importing the SDK, numpy or the backend."""

from __future__ import annotations

from dataclasses import dataclass

# The SDK's default when a model's YAML names no `ddr_requirement_gb`.
DEFAULT_DDR_GB = 4


@dataclass(frozen=True)
class CatalogModel:
    name: str
    hf_id: str  # the YAML's `extra_kwargs.llm.model_name`: the Hugging Face id of model and tokenizer
    context: int
    ddr_gb: int  # the YAML's `ddr_requirement_gb`: the smallest card memory it loads on
    velvet: bool = False  # the SDK sends Velvet an empty system prompt

    @property
    def cores(self) -> int:
        """AIPU cores it was compiled for, read from the name as the SDK does (no "Ncore": 1).
        Informational: the connection always takes all 4 sub-devices."""
        for part in self.name.split("-"):
            if part.endswith("core") and part[:-4].isdigit():
                return int(part[:-4])
        return 1

    @property
    def reply_reserve(self) -> int:
        return reply_reserve_for(self.context)

    @property
    def tokenizer_dir_name(self) -> str:
        """Where the SDK extracts the model's tokenizer archive: `<build>/tokenizers/<this>`."""
        return self.hf_id.replace("/", "_")


_LLAMA_1B = "meta-llama/Llama-3.2-1B-Instruct"
_LLAMA_3B = "meta-llama/Llama-3.2-3B-Instruct"
_LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
_PHI3 = "microsoft/Phi-3-mini-4k-instruct"
_VELVET = "Almawave/Velvet-2B"

# The SDK's precompiled LLMs with the card memory their YAMLs ask for (checked against
# releases 1.3.1, 1.4.2 and 1.5.2). The `-4core-` names are 1.4/1.5's; 1.3.1 names three
# of the same models without it.
CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel("llama-3-2-1b-1024-4core-static", _LLAMA_1B, 1024, 4),
        CatalogModel("llama-3-2-3b-1024-4core-static", _LLAMA_3B, 1024, 4),
        CatalogModel("llama-3-1-8b-1024-4core-static", _LLAMA_8B, 1024, 16),
        CatalogModel("phi3-mini-512-static", _PHI3, 512, 4),
        CatalogModel("phi3-mini-1024-4core-static", _PHI3, 1024, 16),
        CatalogModel("phi3-mini-2048-4core-static", _PHI3, 2048, 16),
        CatalogModel("velvet-2b-1024-4core-static", _VELVET, 1024, 4, velvet=True),
        # Release 1.3.1's names.
        CatalogModel("llama-3-1-8b-1024-static", _LLAMA_8B, 1024, 16),
        CatalogModel("phi3-mini-2048-static", _PHI3, 2048, 16),
        CatalogModel("velvet-2b-1024-static", _VELVET, 1024, 4, velvet=True),
    )
}


def reply_reserve_for(context: int) -> int:
    """Tokens kept free for the reply when trimming chat history, as the SDK does."""
    return 64 if context <= 512 else 128
