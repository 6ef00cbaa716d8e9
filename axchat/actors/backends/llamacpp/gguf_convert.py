"""A Hugging Face Llama-family directory (Llama, SmolLM2, Llama 3.x) written as a GGUF
file with the `gguf` package's writer, in f32, f16 or bf16; quantized types are made
from that by libllama (`quantize.py`).

The file carries the model's own vocabulary (padded to the model's vocab size) and chat
template, so it is usable on its own. Its pre-tokenizer key names libllama's split only
where that gives the Hugging Face tokenizer's ids exactly (`tokenizer_match`); the
daemon then tokenizes with libllama, else with the Hugging Face tokenizer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from axchat.actors.backends.llamacpp import safetensors_read, tokenizer_match
from axchat.models.model_files import ModelFileError

# Bumped whenever the written file would differ for the same source: part of the cache key.
CONVERTER_VERSION = 3
ARCHITECTURES = ("LlamaForCausalLM",)
FLOAT_TYPES = ("f32", "f16", "bf16")


class ConversionError(Exception):
    """The model cannot be converted; one line for the user."""


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {model_dir / 'config.json'}: {exc}") from None
    return config


def convertible(config: dict[str, Any]) -> bool:
    return any(a in ARCHITECTURES for a in config.get("architectures") or [])


def _rope(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope theta, scaling parameters) in transformers 5's spelling or the older one."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    theta = float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)
    merged = {**scaling, **params}
    kind = merged.get("rope_type") or merged.get("type") or "default"
    return theta, {**merged, "rope_type": kind}


def llama3_rope_factors(theta: float, head_dim: int, rope: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors of Llama 3's rope scaling: high frequencies as trained, low
    ones stretched by `factor`, a smooth ramp between (llama.cpp reads them from
    `rope_freqs.weight`)."""
    factor = float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    original = float(rope["original_max_position_embeddings"])
    low_wavelen, high_wavelen = original / low, original / high
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi / (1.0 / theta ** (i / head_dim))
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face keeps each head's rotary halves apart (rotate_half); llama.cpp's rope
    rotates adjacent pairs. Interleave the halves of every q/k head's rows to match."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_name(name: str) -> str | None:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"]:
        return None
    per_layer = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    short = per_layer.get(".".join(parts[3:-1]))
    return None if short is None else f"blk.{parts[2]}.{short}.{parts[-1]}"


def gguf_vocabulary(model_dir: Path, vocab_size: int) -> dict[str, Any]:
    """The vocabulary as GGUF keys want it, padded with unused tokens to the model's size."""
    import gguf

    try:
        spec = json.loads((model_dir / "tokenizer.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {model_dir / 'tokenizer.json'}: {exc}") from None
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(f"tokenizer model {model.get('type')!r} is not BPE; only BPE tokenizers are converted")
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    special: set[int] = set()
    for added in spec.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        if added.get("special"):
            special.add(int(added["id"]))
    if max(by_id) >= vocab_size:
        raise ConversionError(f"the tokenizer has id {max(by_id)}, past the model's vocabulary of {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))
    try:
        tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tok_config = {}
    template = tok_config.get("chat_template")
    jinja = model_dir / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text()
    ids = {t: i for i, t in by_id.items()}
    named = {k: ids.get(_token_text(v)) for k, v in tok_config.items() if k in ("bos_token", "eos_token", "pad_token")}
    pre = tokenizer_match.llama_pre_tokenizer(spec)
    return {"tokens": tokens, "types": types, "merges": merges, "byte_level": byte_level, "pre": pre, "template": template, **named}


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json gives it: its text, or an object holding it."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _weight_type(kind: str) -> tuple[Any, Callable[[np.ndarray], np.ndarray], int]:
    import gguf

    if kind == "f32":
        return gguf.GGMLQuantizationType.F32, lambda a: a.astype(np.float32), gguf.LlamaFileType.ALL_F32
    if kind == "f16":
        return gguf.GGMLQuantizationType.F16, lambda a: a.astype(np.float16), gguf.LlamaFileType.MOSTLY_F16
    if kind == "bf16":
        return (
            gguf.GGMLQuantizationType.BF16,
            lambda a: gguf.quants.quantize(a.astype(np.float32), gguf.GGMLQuantizationType.BF16),
            gguf.LlamaFileType.MOSTLY_BF16,
        )
    raise ConversionError(f"weight type {kind!r} is not written by the converter; choose {', '.join(FLOAT_TYPES)}")


def convert(model_dir: Path, out: Path, kind: str, progress: Callable[[float], None] = lambda f: None) -> None:
    """Write `model_dir` as GGUF at `out` (the caller renames it into place). `progress`
    hears the fraction of weights written."""
    import gguf

    config = read_config(model_dir)
    if not convertible(config):
        raise ConversionError(f"{model_dir} is a {config.get('architectures')} model; the converter reads {', '.join(ARCHITECTURES)}")
    raw_type, cast, file_type = _weight_type(kind)
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    vocab = int(config["vocab_size"])
    theta, rope = _rope(config)
    try:
        tensors = safetensors_read.tensor_names(model_dir)
    except (ModelFileError, OSError, ValueError, KeyError) as exc:
        raise ConversionError(f"cannot read the weights of {model_dir}: {exc}") from None

    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(model_dir.name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-5))
    writer.add_vocab_size(vocab)
    writer.add_file_type(file_type)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] not in ("default", "llama3"):
        raise ConversionError(f"rope scaling {rope['rope_type']!r} is not converted")

    tok = gguf_vocabulary(model_dir, vocab)
    writer.add_tokenizer_model("gpt2" if tok["byte_level"] else "llama")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    if tok["merges"]:
        writer.add_token_merges(tok["merges"])
    if not tok["byte_level"]:
        writer.add_token_scores([0.0] * vocab)
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id), ("pad_token", writer.add_pad_token_id)):
        if tok.get(key) is not None:
            add(int(tok[key]))
    writer.add_add_bos_token(False)  # the tokenizer actor adds bos itself, as tokenizer_config.json says
    if tok["template"]:
        writer.add_chat_template(tok["template"])

    # (gguf name, source name, rows permuted for this many heads or 0) in file order.
    plan: list[tuple[str, str, int]] = []
    for name in tensors:
        target = _tensor_name(name)
        if target is None:
            continue
        permute = heads if name.endswith("q_proj.weight") else kv_heads if name.endswith("k_proj.weight") else 0
        plan.append((target, name, permute))
    if not any(t == "token_embd.weight" for t, _, _ in plan):
        raise ConversionError(f"{model_dir} has no model.embed_tokens.weight")
    extra: list[tuple[str, np.ndarray]] = []
    if rope["rope_type"] == "llama3":
        extra.append(("rope_freqs.weight", llama3_rope_factors(theta, head_dim, rope)))

    def stored(shape: list[int]) -> tuple[Any, np.dtype, int]:
        # Norms and other vectors stay float32, as llama.cpp expects.
        if len(shape) == 1 or raw_type == gguf.GGMLQuantizationType.F32:
            return None, np.dtype(np.float32), 4
        if raw_type == gguf.GGMLQuantizationType.F16:
            return None, np.dtype(np.float16), 2
        return raw_type, np.dtype(np.uint16), 2

    for target, name, _ in plan:
        shape = tensors[name][1]
        dtype_raw, dtype, size = stored(shape)
        writer.add_tensor_info(target, shape, dtype, int(np.prod(shape)) * size, raw_dtype=dtype_raw)
    for target, array in extra:
        writer.add_tensor_info(target, list(array.shape), array.dtype, array.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(int(np.prod(tensors[n][1])) for _, n, _ in plan)
    done = 0
    for _, name, permute in plan:
        path, shape = tensors[name]
        w = safetensors_read.read_tensor(path, name)
        if permute:
            w = permute_rows(w, permute)
        writer.write_tensor_data(np.ascontiguousarray(w if len(shape) == 1 else cast(w)))
        done += int(np.prod(shape))
        progress(done / total)
    for _, array in extra:
        writer.write_tensor_data(array)
    writer.close()
