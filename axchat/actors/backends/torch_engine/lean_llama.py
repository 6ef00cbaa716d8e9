"""A lean forward pass for Llama-family models over a static, slot-organised KV cache.

Why: the generic transformers forward spends most of a decode step on per-operation
overhead (dozens of small kernels per layer, a cache object per sequence, masks and
position ids rebuilt in Python), and batching different sequences meant copying all
their KV every step. Here the weights of the Hugging Face module are used as they are
(q/k/v and gate/up concatenated once, so one matmul each), the rotary table is computed
once by the model's own rotary module (so llama3 and other scalings are exactly the
model's), and each sequence owns a row ("slot") of a preallocated cache for its life.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from axchat.actors.backends.torch_engine.matmul_lanes import Lanes

Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Architectures whose layer is exactly: RMSNorm, q/k/v projections without bias, rotary
# embedding on q and k, attention with grouped KV heads, o projection, RMSNorm, SiLU-gated
# MLP. Others use the generic transformers path.
LEAN_ARCHITECTURES = ("LlamaForCausalLM",)


def supports(model: Any) -> bool:
    config = model.config
    return (
        type(model).__name__ in LEAN_ARCHITECTURES
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "hidden_act", "silu") == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
    )


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [q_heads*d + 2*kv_heads*d, hidden]
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2*intermediate, hidden]
    down: torch.Tensor


@dataclass(frozen=True)
class _Shape:
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float


@dataclass(frozen=True)
class Feed:
    """Rows of one length for a forward: token_ids [rows, T] at positions starts[i]..
    of slots[i], rows in increasing slot order. `lengths`: each row's real tokens when
    rows are padded at the end to T (None: all T are real)."""

    token_ids: torch.Tensor
    slots: Sequence[int]
    starts: Sequence[int]
    lengths: Sequence[int] | None = None


@dataclass(frozen=True)
class _Part:
    """One feed as every layer of the forward sees it."""

    begin: int  # its first token in the forward's flat list of tokens
    rows: int
    steps: int  # T
    longest: int  # keys each row attends over (the longest row's)
    positions: torch.Tensor  # [rows, T]
    mask: torch.Tensor  # [rows, 1, T, L], additive
    slot_t: torch.Tensor
    first_slot: int  # -1: rows are not one contiguous run of slots

    @property
    def end(self) -> int:
        return self.begin + self.rows * self.steps


@dataclass(frozen=True)
class _StepView:
    """What every layer of one forward shares."""

    parts: list[_Part]
    cos: torch.Tensor  # [tokens, 1, d]: each token's rotary row
    sin: torch.Tensor


class SlotCache:
    """Per layer one key and one value tensor [slots, kv_heads, capacity, head_dim].

    Capacity grows by doubling up to the context length, so a model with a long context
    does not reserve it all up front; a sequence keeps its slot for life, so a batched
    decode step reads the slots in place and never copies KV.
    """

    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, context: int,
                 dtype: torch.dtype, device: torch.device, capacity: int = 256) -> None:
        self.shape = (slots, kv_heads, head_dim)
        self.context = context
        self.dtype, self.device = dtype, device
        self.capacity = min(capacity, context)
        self.keys = [self._empty(self.capacity) for _ in range(layers)]
        self.values = [self._empty(self.capacity) for _ in range(layers)]

    def _empty(self, capacity: int) -> torch.Tensor:
        slots, kv_heads, head_dim = self.shape
        return torch.zeros((slots, kv_heads, capacity, head_dim), dtype=self.dtype, device=self.device)

    def reserve(self, length: int) -> None:
        """Make room for `length` positions in every slot."""
        if length <= self.capacity:
            return
        if length > self.context:
            raise ValueError(f"{length} positions is more than the context of {self.context}")
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.context)
        for table in (self.keys, self.values):
            for i, old in enumerate(table):
                new = self._empty(capacity)
                new[:, :, : self.capacity] = old
                table[i] = new
        self.capacity = capacity

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        for table in (self.keys, self.values):
            for t in table:
                t[dst, :, :length] = t[src, :, :length]

    def export(self, slot: int, length: int) -> torch.Tensor:
        """The slot's first `length` positions as one new tensor [layers, 2, kv_heads, length, dim]."""
        return torch.stack([torch.stack((k[slot, :, :length], v[slot, :, :length])) for k, v in zip(self.keys, self.values, strict=True)])

    def restore(self, slot: int, kv: torch.Tensor, length: int) -> None:
        self.reserve(length)
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            k[slot, :, :length] = kv[i, 0, :, :length]
            v[slot, :, :length] = kv[i, 1, :, :length]


class LeanLlama:
    """Forward passes of a Hugging Face Llama model over a SlotCache."""

    def __init__(self, model: Any, slots: int, context: int, dtype: torch.dtype | None = None) -> None:
        config = model.config
        inner = model.model
        self.dtype = dtype or next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.intermediate = int(config.intermediate_size)
        self.eps = float(config.rms_norm_eps)
        self.context = context

        def w(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(self.dtype).contiguous()

        self.layers = [
            _Layer(
                input_norm=w(layer.input_layernorm.weight),
                qkv=w(torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight])),
                o=w(layer.self_attn.o_proj.weight),
                post_norm=w(layer.post_attention_layernorm.weight),
                gate_up=w(torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])),
                down=w(layer.mlp.down_proj.weight),
            )
            for layer in inner.layers
        ]
        self.embed = w(inner.embed_tokens.weight)
        self.norm = w(inner.norm.weight)
        head = model.lm_head.weight
        self.head = self.embed if head is inner.embed_tokens.weight else w(head)
        # The model's own rotary module makes the table: every rope scaling it knows is right.
        with torch.no_grad():
            probe = torch.zeros(1, dtype=torch.float32, device=self.device)
            positions = torch.arange(context, device=self.device)[None]
            cos, sin = inner.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # [context, head_dim]
        self.cache = SlotCache(len(self.layers), slots, self.kv_heads, self.head_dim, context, self.dtype, self.device)
        self.shape = _Shape(self.heads, self.kv_heads, self.head_dim, self.intermediate, self.eps)
        # The matmul of every projection: F.linear, or one split across threads (use_lanes).
        self.linear: Linear = F.linear
        self.attend: Callable[..., torch.Tensor] = _attention
        self.lanes: Lanes | None = None
        self.attention_inputs: Callable[..., Any] = _attention_inputs
        self.mlp_block: Callable[..., torch.Tensor] = _mlp_block
        self.compiled = False

    def use_lanes(self, lanes: Lanes) -> None:
        """Run the projections on `lanes` (matmul_lanes); this object closes them."""
        self.close()
        self.lanes, self.linear = lanes, lanes.linear
        self.attend = functools.partial(_attention_in_lanes, lanes)

    def close(self) -> None:
        """Stop any helper threads; the forward goes back to plain F.linear."""
        if self.lanes is not None:
            self.lanes.close()
        self.lanes, self.linear, self.attend = None, F.linear, _attention

    def forward(
        self, token_ids: torch.Tensor, slots: Sequence[int], starts: Sequence[int], lengths: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Feed `token_ids` [rows, T] at positions starts[i].. of slots[i]; return float32
        logits [rows, vocab] after each row's last token.

        `lengths`: each row's real tokens when rows of different lengths are padded at
        the end to T (a batched prefill); the logits are taken after a row's last real
        token. A pad's KV lands past the row's end, where no query of that row looks
        (causal mask) and its next real token overwrites it.

        Rows must be in increasing slot order. Contiguous slots are read in place (the
        common case, the device actor's batch); otherwise their KV is gathered.
        """
        return self.forward_feeds([Feed(token_ids, slots, starts, lengths)])[0]

    def forward_feeds(self, feeds: Sequence[Feed]) -> list[torch.Tensor]:
        """Several feeds of different lengths (a decode step's rows and a prompt chunk)
        in one forward: every projection runs once over all their tokens, so the weights
        are read once; attention runs per feed. Logits [rows, vocab] per feed."""
        view = self._view(feeds)
        ids = [f.token_ids.reshape(-1) for f in feeds]
        x = F.embedding(ids[0] if len(ids) == 1 else torch.cat(ids), self.embed)  # [tokens, hidden]
        for layer, keys, values in zip(self.layers, self.cache.keys, self.cache.values, strict=True):
            x = _layer_forward(
                x, layer, keys, values, view, self.shape, self.attention_inputs, self.mlp_block, self.linear, self.attend
            )
        picks: list[int] = []
        for feed, part in zip(feeds, view.parts, strict=True):
            lengths = feed.lengths if feed.lengths is not None else [part.steps] * part.rows
            picks += [part.begin + row * part.steps + n - 1 for row, n in enumerate(lengths)]
        last = x[torch.tensor(picks, device=x.device)]
        logits = self.linear(_rms_norm(last, self.norm, self.shape.eps), self.head).float()
        return list(logits.split([p.rows for p in view.parts]))

    def _view(self, feeds: Sequence[Feed]) -> _StepView:
        """Positions, rotary rows and masks of one forward, built once for all layers."""
        dev = self.device
        self.cache.reserve(max(max(f.starts) + f.token_ids.shape[1] for f in feeds))
        parts: list[_Part] = []
        begin = 0
        for feed in feeds:
            rows, steps = feed.token_ids.shape
            longest = max(feed.starts) + steps
            positions = torch.tensor(feed.starts, device=dev)[:, None] + torch.arange(steps, device=dev)  # [rows, T]
            # A query sees the keys at or before its own position in its own slot.
            visible = torch.arange(longest, device=dev)[None, None, None, :] <= positions[:, None, :, None]
            mask = torch.zeros(visible.shape, dtype=torch.float32, device=dev).masked_fill_(~visible, float("-inf"))
            slots = list(feed.slots)
            contiguous = slots == list(range(slots[0], slots[0] + rows))
            parts.append(
                _Part(begin, rows, steps, longest, positions, mask, torch.tensor(slots, device=dev), slots[0] if contiguous else -1)
            )
            begin += rows * steps
        flat = parts[0].positions.reshape(-1) if len(parts) == 1 else torch.cat([p.positions.reshape(-1) for p in parts])
        return _StepView(parts=parts, cos=self.cos[flat][:, None], sin=self.sin[flat][:, None])

    def compile(self) -> None:
        """Compile the two dense pieces of a layer (inductor; on CUDA also CUDA graphs).
        Dynamic shapes: one graph serves every layer, batch size and length. Cache
        writes and attention stay eager: their shapes change every step."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.close()  # a compiled graph cannot hand work to other threads
        self.attention_inputs = torch.compile(_attention_inputs, dynamic=True, mode=mode)
        self.mlp_block = torch.compile(_mlp_block, dynamic=True, mode=mode)
        self.compiled = True


def _layer_forward(
    x: torch.Tensor, layer: _Layer, keys: torch.Tensor, values: torch.Tensor, view: _StepView,
    shape: _Shape, attention_inputs: Callable[..., Any], mlp_block: Callable[..., torch.Tensor], linear: Linear,
    attend: Callable[..., torch.Tensor],
) -> torch.Tensor:
    heads, kv_heads, dim = shape.heads, shape.kv_heads, shape.head_dim
    q, k, v = attention_inputs(x, layer.input_norm, layer.qkv, view.cos, view.sin, heads, kv_heads, dim, shape.eps, linear)
    outs = []
    for part in view.parts:
        rows, steps = part.rows, part.steps
        # Into the cache at each row's positions: [rows, T] indices pick [rows, T, kv, d] places.
        keys[part.slot_t[:, None], :, part.positions] = k[part.begin : part.end].view(rows, steps, kv_heads, dim)
        values[part.slot_t[:, None], :, part.positions] = v[part.begin : part.end].view(rows, steps, kv_heads, dim)
        if part.first_slot >= 0:
            k_all = keys[part.first_slot : part.first_slot + rows, :, : part.longest]
            v_all = values[part.first_slot : part.first_slot + rows, :, : part.longest]
        else:  # rows in scattered slots: gather them (a copy, only when the batch is not a slice)
            k_all = keys[part.slot_t, :, : part.longest]
            v_all = values[part.slot_t, :, : part.longest]
        qp = q[part.begin : part.end].view(rows, steps, heads, dim).transpose(1, 2)
        attn = attend(qp, k_all, v_all, part.mask, kv_heads)  # [rows, heads, T, d]
        outs.append(attn.transpose(1, 2).reshape(rows * steps, heads * dim))
    attn_flat = outs[0] if len(outs) == 1 else torch.cat(outs)
    return mlp_block(x, attn_flat, layer.o, layer.post_norm, layer.gate_up, layer.down, shape.intermediate, shape.eps, linear)


def _attention_inputs(
    x: torch.Tensor, norm: torch.Tensor, qkv_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    heads: int, kv_heads: int, head_dim: int, eps: float, linear: Linear = F.linear,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [tokens, hidden] -> q [tokens, heads, d] and k [tokens, kv_heads, d], rotated, and v."""
    tokens = x.shape[0]
    q, k, v = linear(_rms_norm(x, norm, eps), qkv_w).split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1)
    q = _rotate(q.view(tokens, heads, head_dim), cos, sin)
    k = _rotate(k.view(tokens, kv_heads, head_dim), cos, sin)
    return q, k, v.view(tokens, kv_heads, head_dim)


def _mlp_block(
    x: torch.Tensor, attn: torch.Tensor, o_w: torch.Tensor, norm: torch.Tensor, gate_up_w: torch.Tensor,
    down_w: torch.Tensor, intermediate: int, eps: float, linear: Linear = F.linear,
) -> torch.Tensor:
    """The attention output [tokens, heads*d] projected and added, then the gated MLP
    and its residual."""
    x = x + linear(attn, o_w)
    gate, up = linear(_rms_norm(x, norm, eps), gate_up_w).split([intermediate, intermediate], -1)
    return x + linear(F.silu(gate) * up, down_w)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Grouped-query attention as three plain ops. torch's CPU SDPA kernel costs
    milliseconds per call with a mask at decode shapes; two batched matmuls and a
    softmax over [rows, kv_heads, group*T, L] cost microseconds. `mask` is additive
    (0 or -inf), [rows, 1, T, L]."""
    rows, heads, steps, dim = q.shape
    group = heads // kv_heads
    qg = q.reshape(rows, kv_heads, group * steps, dim)
    scores = torch.matmul(qg, k.transpose(-1, -2)) * (dim**-0.5)
    scores = scores.view(rows, kv_heads, group, steps, -1) + mask[:, :, None]
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype).view(rows, kv_heads, group * steps, -1)
    return torch.matmul(probs, v).view(rows, heads, steps, dim)


# Below this many query-key scores (times head size) in a forward's attention, it stays
# on one thread: handing half to another costs about what it saves.
MIN_SPLIT_SCORES = 1 << 18


def _attention_in_lanes(
    lanes: Lanes, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, kv_heads: int
) -> torch.Tensor:
    """_attention with the query positions (a prompt chunk's), or else the rows (a decode
    batch's), shared out over the lanes. Each query's scores, softmax and sum are its
    own, so the result is the same. Deep into a long conversation a chunk's attention
    is half its forward (SmolLM2 shape, 143 tokens after 1324: 0.69 of 1.37 s)."""
    rows, heads, steps, dim = q.shape
    if rows * heads * steps * k.shape[-2] * dim < MIN_SPLIT_SCORES:
        return _attention(q, k, v, mask, kv_heads)
    if steps > 1:
        parts = [(q[:, :, a:b], k, v, mask[:, :, a:b], kv_heads) for a, b in lanes.bounds(steps)]
        return torch.cat(lanes.map(_attention, parts), dim=2)
    parts = [(q[a:b], k[a:b], v[a:b], mask[a:b], kv_heads) for a, b in lanes.bounds(rows)]
    return torch.cat(lanes.map(_attention, parts), dim=0)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Spelled out: aten's fused rms_norm costs ~90 us per call at decode shapes on CPU.
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
