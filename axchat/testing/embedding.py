"""A small Llama embedded exactly into a bigger Llama shape: the big model computes the
small one's logits at the big one's cost per token. How, for a residual stream that is
the small one padded with zeros:
* hidden, intermediate and head dimensions are zero-padded; the small model's layers are
  the first ones, the others have all-zero projections (the residual passes through them
  unchanged), and so do the extra attention heads;
* RMSNorm divides by the root mean square over the whole width, D wide instead of d, so
  every norm weight is scaled by sqrt(d/D); the small model is built with epsilon·D/d,
  which is what the big norm's epsilon amounts to (then the two are equal, not close);
* head_dim and RoPE are the same, so a head moves over as it is: the small model's query
  head r of kv group j becomes the big one's head r of group j;
* the big vocabulary's ids beyond the small one take a filler token's rows (embedding
  and output): they score exactly what the filler does.
`extract` is the inverse, to check a built model against the small one it holds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM


def _heads(config: Any) -> tuple[int, int, int]:
    """(query heads, kv heads, head_dim)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads, config.num_key_value_heads, head_dim


def _check_fits(small: Any, big: Any) -> None:
    sq, skv, sdim = _heads(small)
    bq, bkv, bdim = _heads(big)
    fits = (
        small.hidden_size <= big.hidden_size
        and small.intermediate_size <= big.intermediate_size
        and small.num_hidden_layers <= big.num_hidden_layers
        and small.vocab_size <= big.vocab_size
        and sdim == bdim
        and skv <= bkv
        and sq // skv <= bq // bkv
        and small.tie_word_embeddings == big.tie_word_embeddings
    )
    if not fits:
        raise ValueError("the small model does not fit in the big shape (sizes, head_dim, kv groups or tying)")


def _head_rows(small: Any, big: Any, kv: bool) -> list[tuple[slice, slice]]:
    """(small rows, big rows) of each query (or kv) head's projection."""
    sq, skv, dim = _heads(small)
    bq, bkv, _ = _heads(big)
    if kv:
        pairs = [(j, j) for j in range(skv)]
    else:
        sg, bg = sq // skv, bq // bkv
        pairs = [(i, (i // sg) * bg + i % sg) for i in range(sq)]
    return [(slice(s * dim, (s + 1) * dim), slice(b * dim, (b + 1) * dim)) for s, b in pairs]


def embed(small: LlamaForCausalLM, big_config: LlamaConfig, filler_id: int) -> dict[str, torch.Tensor]:
    """The big shape's float32 state dict that computes what `small` computes (see the module doc)."""
    import torch

    sc, bc = small.config, big_config
    _check_fits(sc, bc)
    d, big_d = sc.hidden_size, bc.hidden_size
    norm_scale = math.sqrt(d / big_d)
    src = {k: v.detach().float() for k, v in small.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def norm(name: str) -> None:
        w = torch.zeros(big_d)
        w[:d] = src[name] * norm_scale
        out[name] = w

    def vocab_matrix(name: str) -> None:
        w = torch.zeros(bc.vocab_size, big_d)
        w[: sc.vocab_size, :d] = src[name]
        w[sc.vocab_size :, :d] = src[name][filler_id]
        out[name] = w

    _, bkv, dim = _heads(bc)
    bq = bc.num_attention_heads
    for layer in range(bc.num_hidden_layers):
        p = f"model.layers.{layer}."
        proj = {
            "self_attn.q_proj": (bq * dim, big_d),
            "self_attn.k_proj": (bkv * dim, big_d),
            "self_attn.v_proj": (bkv * dim, big_d),
            "self_attn.o_proj": (big_d, bq * dim),
            "mlp.gate_proj": (bc.intermediate_size, big_d),
            "mlp.up_proj": (bc.intermediate_size, big_d),
            "mlp.down_proj": (big_d, bc.intermediate_size),
        }
        for name, size in proj.items():
            out[f"{p}{name}.weight"] = torch.zeros(size)
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + name] = torch.zeros(big_d)
        if layer >= sc.num_hidden_layers:
            continue  # a pass-through layer
        norm(p + "input_layernorm.weight")
        norm(p + "post_attention_layernorm.weight")
        for name, kv in (("q_proj", False), ("k_proj", True), ("v_proj", True)):
            for s_rows, b_rows in _head_rows(sc, bc, kv):
                out[f"{p}self_attn.{name}.weight"][b_rows, :d] = src[f"{p}self_attn.{name}.weight"][s_rows]
        for s_cols, b_cols in _head_rows(sc, bc, False):
            out[f"{p}self_attn.o_proj.weight"][:d, b_cols] = src[f"{p}self_attn.o_proj.weight"][:, s_cols]
        i = sc.intermediate_size
        for name in ("gate_proj", "up_proj"):
            out[f"{p}mlp.{name}.weight"][:i, :d] = src[f"{p}mlp.{name}.weight"]
        out[f"{p}mlp.down_proj.weight"][:d, :i] = src[f"{p}mlp.down_proj.weight"]
    norm("model.norm.weight")
    vocab_matrix("model.embed_tokens.weight")
    if not bc.tie_word_embeddings:
        vocab_matrix("lm_head.weight")
    return out


def big_model(state: dict[str, torch.Tensor], config: LlamaConfig, dtype: str) -> LlamaForCausalLM:
    """`config`'s model holding `state`, cast to `dtype`, without initialising weights first."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict({k: v.to(getattr(torch, dtype)) for k, v in state.items()}, strict=False, assign=True)
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # its buffers were on the meta device
    return model.eval()


def extract(big: LlamaForCausalLM, small_config: LlamaConfig) -> LlamaForCausalLM:
    """The small model `embed` put into `big` (float32), read back out of it."""
    import torch
    from transformers import LlamaForCausalLM

    sc, bc = small_config, big.config
    _check_fits(sc, bc)
    d = sc.hidden_size
    norm_scale = math.sqrt(d / bc.hidden_size)
    src = {k: v.detach().float() for k, v in big.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for layer in range(sc.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + name] = src[p + name][:d] / norm_scale
        for name, kv in (("q_proj", False), ("k_proj", True), ("v_proj", True)):
            big_w = src[f"{p}self_attn.{name}.weight"]
            out[f"{p}self_attn.{name}.weight"] = torch.cat([big_w[b, :d] for _, b in _head_rows(sc, bc, kv)])
        o = src[f"{p}self_attn.o_proj.weight"]
        out[f"{p}self_attn.o_proj.weight"] = torch.cat([o[:d, b] for _, b in _head_rows(sc, bc, False)], dim=1)
        i = sc.intermediate_size
        for name in ("gate_proj", "up_proj"):
            out[f"{p}mlp.{name}.weight"] = src[f"{p}mlp.{name}.weight"][:i, :d]
        out[f"{p}mlp.down_proj.weight"] = src[f"{p}mlp.down_proj.weight"][:d, :i]
    out["model.norm.weight"] = src["model.norm.weight"][:d] / norm_scale
    out["model.embed_tokens.weight"] = src["model.embed_tokens.weight"][: sc.vocab_size, :d]
    if not sc.tie_word_embeddings:
        out["lm_head.weight"] = src["lm_head.weight"][: sc.vocab_size, :d]
    small = LlamaForCausalLM(sc).float()
    missing, unexpected = small.load_state_dict(out, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"extract: state does not match the small config ({missing=}, {unexpected=})")
    small.tie_weights()
    return small
