"""What a backend is asked to load with: one object from the daemon's settings to the
engine, so a new option is added in one place and reaches every engine the same way."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadOptions:
    """Each engine reads the fields it understands; the rest mean nothing to it."""

    device: str = "auto"  # torch: "auto", "cpu", "cuda:N"
    dtype: str = "auto"  # torch, llama.cpp conversion
    context: int | None = None  # None: the model's own (the AIPU's: its build's)
    threads: int | None = None  # None: measured at load from the usable cores
    # torch lean path: threads splitting each matmul. Not a user setting: a reload after
    # keep-alive passes back the plan measured at start-up, together with `threads`.
    lanes: int | None = None
    prefix_cache_bytes: int = 256 << 20  # 0: no prefix cache
    running_kv_bytes: int = 256 << 20  # llama.cpp: KV cells for running sequences, at least one context
    compile: bool = False  # torch lean path: compile the decode step
    quant: str = "auto"  # llama.cpp: the weight type a converted model gets
    draft_model: str | None = None  # llama.cpp: a smaller model of the same vocabulary that proposes tokens
    build_root: str | None = None  # aipu: where the SDK's compiled models live
    aipu_device: str | None = None  # aipu: card selector
    aipu_runtime: str | None = None  # aipu: "real" or "emulator"; None: $AXCHAT_AIPU_RUNTIME, else real
    tokenizer_dir: str | None = None  # aipu: the tokenizer's directory
