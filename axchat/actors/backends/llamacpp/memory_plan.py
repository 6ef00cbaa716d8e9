"""What a llama.cpp load will take, known before it starts (weights, the two KV pools,
compute buffers), and the one-line refusal of a plan that does not fit."""

from __future__ import annotations

from dataclasses import dataclass

from axchat.actors.backends.base import ModelLoadError

MIB = 1 << 20
# Left for everything the plan does not count (the interpreter, libraries, the logits
# the sampler reads): a load must not take the machine's last megabytes.
HEADROOM_BYTES = 128 * MIB


@dataclass(frozen=True)
class MemoryPlan:
    weights_bytes: int  # the GGUF file: mapped, and every page is read each step
    running_kv_bytes: int
    prefix_kv_bytes: int  # kept conversations (host memory, filled as they come)
    compute_bytes: int  # llama.cpp's graph buffers and logits, estimated
    draft_bytes: int = 0  # a draft model's weights, KV and buffers (--draft-model)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.running_kv_bytes + self.prefix_kv_bytes + self.compute_bytes + self.draft_bytes


def compute_bytes(meta: dict[str, str], arch: str, batch: int, cells: int, exact: bool) -> int:
    """llama.cpp's compute buffer for one `batch`-token step, worst case: the logits of
    every row, the layer activations, and (without flash attention, the exact path)
    the attention scores over every cell."""
    vocab = int(meta[f"{arch}.vocab_size"])
    embd = int(meta[f"{arch}.embedding_length"])
    ff = int(meta.get(f"{arch}.feed_forward_length", str(4 * embd)))
    heads = int(meta.get(f"{arch}.attention.head_count", "1"))
    floats = batch * (vocab + 8 * embd + 3 * ff)
    if exact:
        floats += batch * cells * heads
    return 4 * floats


def refusal(plan: MemoryPlan, available: int, *, ctx_len: int, running_set_by_context: bool) -> str | None:
    """Why `plan` cannot load with `available` bytes free (one line, with the option
    that lowers its largest part), or None when it fits."""
    need = plan.total_bytes + HEADROOM_BYTES
    if need <= available:
        return None
    parts = {
        "weights": plan.weights_bytes,
        "running KV": plan.running_kv_bytes,
        "kept-prefix KV": plan.prefix_kv_bytes,
        "buffers": plan.compute_bytes,
        **({"draft model": plan.draft_bytes} if plan.draft_bytes else {}),
    }
    largest = max(parts, key=lambda k: parts[k])
    lower = {
        "weights": "a smaller weight type (--quant q4_k_m) or a smaller model",
        "running KV": (
            f"--context (the model's {ctx_len} positions set it: each running sequence may fill one context)"
            if running_set_by_context
            else "--running-kv-mb"
        ),
        "kept-prefix KV": "--prefix-cache-mb (0 turns conversation reuse off)",
        "buffers": "--context",
        "draft model": "a smaller --draft-model, or none",
    }[largest]
    detail = ", ".join(f"{name} {size / MIB:.0f}" for name, size in parts.items())
    return (
        f"the model needs {need / MIB:.0f} MiB ({detail}, headroom {HEADROOM_BYTES / MIB:.0f}) "
        f"but {available / MIB:.0f} MiB are available; lower {lower}"
    )


def check(plan: MemoryPlan, available: int, *, ctx_len: int, running_set_by_context: bool) -> None:
    why = refusal(plan, available, ctx_len=ctx_len, running_set_by_context=running_set_by_context)
    if why is not None:
        raise ModelLoadError(why)
