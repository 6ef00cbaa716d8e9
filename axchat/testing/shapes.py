"""The architectures the test models take: a tiny one for the suite, and the public
configs of the small models the benchmarks imitate (SmolLM2-135M, Llama-3.2-1B), with
random weights in `tiny_model.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """Architecture sizes for one named shape; vocab_size None means 'the tokenizer's size'."""

    tokenizer_vocab: int
    config: dict[str, Any]
    vocab_size: int | None
    dtype: str


SHAPES: dict[str, Shape] = {
    "tiny": Shape(
        tokenizer_vocab=1000,
        config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,  # long enough answers to cancel mid-stream at the lean path's speed
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        vocab_size=None,
        dtype="float32",
    ),
    # Public HuggingFaceTB/SmolLM2-135M config.
    "smollm2-135m": Shape(
        tokenizer_vocab=1000,
        config=dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
            rms_norm_eps=1e-5,
            initializer_range=0.041666666666666664,
            tie_word_embeddings=True,
        ),
        vocab_size=49152,
        dtype="bfloat16",
    ),
    # Public meta-llama/Llama-3.2-1B config.
    "llama-3.2-1b": Shape(
        tokenizer_vocab=1000,
        config=dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=131072,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        vocab_size=128256,
        dtype="bfloat16",
    ),
}
