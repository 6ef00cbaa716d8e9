"""Train a small Llama to repeat a passage from its prompt: the copier that
`copy_model.py` embeds into a benchmark shape, so that prompt-lookup (n-gram) drafts
have a model that copies to work with (random weights never copy their prompt).

The task, in the test tokenizer's chat template: the user asks `COPY_INSTRUCTION` +
a passage, the assistant answers the passage, then `<|im_end|>`. Passages are spans of
`corpus.txt` (its last paragraphs held out for the benchmark) and shuffles of its words,
so the model learns to copy, not to recite the corpus. The loss is on the reply only.

Training starts from an analytic copier (`_previous_token_head`, `_induction_head`),
which alone repeats about two tokens in three; from random weights the two heads took
more steps than a few CPU minutes allow (1000 steps: a tenth of the tokens right).
Training then teaches what it lacks: where the passage starts, which of a repeated
token's continuations to take.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

COPY_INSTRUCTION = "Repeat this text exactly:\n"
HELD_OUT_PARAGRAPHS = 4  # the corpus's last paragraphs: the benchmark's passages, never trained on
MAX_SPAN = 400  # tokens from a passage in the prompt to its copy, at most


@dataclass(frozen=True)
class Recipe:
    """What the copier is and how long it trains; part of the cache key."""

    hidden: int = 96
    intermediate: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    steps: int = 600
    batch: int = 8
    lr: float = 3e-3
    min_words: int = 3
    max_words: int = 64


def paragraphs(corpus: str) -> list[str]:
    """The corpus's paragraphs with more than a heading's few words, spaces normalised."""
    out = [" ".join(p.split()) for p in corpus.split("\n\n")]
    return [p for p in out if len(p.split()) >= 12]


def held_out_passages(corpus: str) -> list[str]:
    return paragraphs(corpus)[-HELD_OUT_PARAGRAPHS:]


def prompt_text(passage: str) -> str:
    return f"<|im_start|>user\n{COPY_INSTRUCTION}{passage}<|im_end|>\n<|im_start|>assistant\n"


def _examples(
    tokenizer: PreTrainedTokenizerFast, corpus: str, recipe: Recipe, count: int, seed: int
) -> list[tuple[list[int], int]]:
    """(ids, where the reply starts) for `count` passages."""
    rng = random.Random(seed)
    train = paragraphs(corpus)[:-HELD_OUT_PARAGRAPHS]
    words = [w for p in train for w in p.split()]
    out = []
    for i in range(count):
        n = rng.randint(recipe.min_words, recipe.max_words)
        if i % 4 == 0:
            start = rng.randrange(0, max(1, len(words) - n))
            passage = " ".join(words[start : start + n])
        else:
            passage = " ".join(rng.choice(words) for _ in range(n))
        prompt = tokenizer.encode(prompt_text(passage))
        reply = tokenizer.encode(passage + "<|im_end|>")
        out.append((prompt + reply, len(prompt)))
    return out


def small_config(recipe: Recipe, big: dict[str, Any], big_eps_width: int, vocab: int, special: dict[str, Any]) -> Any:
    """The copier's config: the big shape's head_dim and RoPE (so heads embed as they
    are), and its RMSNorm epsilon scaled by big/small width, which is what the padded
    model's norms amount to (copy_model.embed says why)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=recipe.hidden,
        intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        head_dim=big.get("head_dim", big["hidden_size"] // big["num_attention_heads"]),
        max_position_embeddings=big["max_position_embeddings"],
        rope_parameters=big["rope_parameters"],
        rms_norm_eps=big["rms_norm_eps"] * big_eps_width / recipe.hidden,
        tie_word_embeddings=big.get("tie_word_embeddings", False),
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        **special,
    )


def _batch(examples: list[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(ids) for ids, _ in examples)
    inputs = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, reply) in enumerate(examples):
        inputs[row, : len(ids)] = torch.tensor(ids)
        labels[row, reply : len(ids)] = torch.tensor(ids[reply:])
    return inputs, labels


def _previous_token_head(model: LlamaForCausalLM) -> None:
    """Start layer 0's first head as a previous-token head, which copying builds on
    (the next layer matches the current token against each position's predecessor):
    trained from random weights, this pair of heads took far more steps than a CPU
    affords. Token embeddings get a constant first dimension and live in the lower half
    of the width; the head's query and key read only that constant, rotated by RoPE so
    that the score peaks one position back, and its value writes the token found there
    into the upper half."""
    import torch

    config = model.config
    d = config.hidden_size
    half = d // 2
    dim = config.head_dim or d // config.num_attention_heads
    emb = model.model.embed_tokens.weight
    attn = model.model.layers[0].self_attn
    inv_freq = model.model.rotary_emb.inv_freq  # the angle per position of each rotated pair
    with torch.no_grad():
        token_norm = emb[:, 1:half].norm(dim=1).mean()
        # Every token as long: the head's score is the constant times itself, so a token
        # of another length would move the peak.
        emb[:, 1:half] *= token_norm / emb[:, 1:half].norm(dim=1, keepdim=True).clamp_min(1e-12)  # pad: 0
        emb[:, half:] = 0
        emb[:, 0] = token_norm  # as long as the token part: RMSNorm keeps it constant
        q = attn.q_proj.weight[:dim]
        k = attn.k_proj.weight[:dim]
        q.zero_()
        k.zero_()
        # Score at distance delta: sum over pairs of kappa^2 cos((delta - 1) * angle);
        # the fastest half of the pairs tell neighbours apart.
        constant = math.sqrt(d / 2)  # the first dimension after the norm
        pairs = dim // 8
        kappa = math.sqrt(12.0 * math.sqrt(dim) / (constant**2 * float((1 - inv_freq[:pairs].cos()).sum())))
        for i in range(pairs):
            k[i, 0] = kappa
            q[i, 0] = kappa * math.cos(float(inv_freq[i]))
            q[i + dim // 2, 0] = -kappa * math.sin(float(inv_freq[i]))
        v = attn.v_proj.weight[:dim]
        o = attn.o_proj.weight[:, :dim]
        v.zero_()
        o.zero_()
        width = min(half - 1, dim)
        for j in range(width):
            v[j, 1 + j] = 1.0
            o[half + j, j] = float(token_norm) / (constant * math.sqrt(2))
        # The rest of layer 0 starts silent, so the next layer reads the two halves clean.
        attn.o_proj.weight[:, dim:] = 0
        model.model.layers[0].mlp.down_proj.weight.zero_()


def _induction_head(model: LlamaForCausalLM, generator: torch.Generator) -> None:
    """Start layer 1's first head as an induction head: its query is the current token,
    each key the token before that position (what the previous-token head wrote), its
    value the token at the position: the token that followed the current one earlier,
    written over the current token three times as strong, so it wins the logits. RoPE
    turns query and key by their distance, so the match lives in the slowest pairs
    (at most 0.3 rad over the longest passage)."""
    import torch

    config = model.config
    d = config.hidden_size
    half = d // 2
    dim = config.head_dim or d // config.num_attention_heads
    attn = model.model.layers[1].self_attn
    inv_freq = model.model.rotary_emb.inv_freq
    slow = [i for i in range(dim // 2) if float(inv_freq[i]) * MAX_SPAN < 0.3]
    rows = slow + [i + dim // 2 for i in slow]
    width = half - 1
    basis, _ = torch.linalg.qr(torch.randn(width, len(rows), generator=generator))
    project = basis.T  # (len(rows), width), orthonormal rows
    emb = model.model.embed_tokens.weight
    with torch.no_grad():
        token_norm = float(emb[:, 1:half].norm(dim=1).mean())
        scale = math.sqrt(d / 2.5) / token_norm  # RMSNorm's factor here: constant, token, half a token
        matched = float((emb[4:, 1:half] @ project.T).norm(dim=1).pow(2).mean())
        beta = 14.0 * math.sqrt(dim) * math.sqrt(2) / (scale**2 * matched)
        q = attn.q_proj.weight[:dim]
        k = attn.k_proj.weight[:dim]
        v = attn.v_proj.weight[:dim]
        o = attn.o_proj.weight
        for t in (q, k, v):
            t.zero_()
        o.zero_()
        q[rows, 1:half] = beta * project
        k[rows, half : half + width] = project
        for j in range(min(width, dim)):
            v[j, 1 + j] = 1.0
            o[1 + j, j] = 3.0 / scale
        model.model.layers[1].mlp.down_proj.weight.zero_()


def train(
    tokenizer: PreTrainedTokenizerFast,
    corpus: str,
    config: Any,
    recipe: Recipe,
    *,
    seed: int,
    progress: Callable[[str], None] = lambda _: None,
) -> LlamaForCausalLM:
    """A float32 copier trained on the CPU from `seed` (same seed, same torch: same weights)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().train()
    _previous_token_head(model)
    _induction_head(model, torch.Generator().manual_seed(seed))
    data = _examples(tokenizer, corpus, recipe, recipe.steps * recipe.batch, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, recipe.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (recipe.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    started = time.monotonic()
    for step in range(recipe.steps):
        # Padding is on the right and the loss ignores it: causal attention keeps it
        # from reaching the tokens that count, so no attention mask is needed.
        inputs, labels = _batch(data[step * recipe.batch : (step + 1) * recipe.batch], tokenizer.pad_token_id)
        loss = model(input_ids=inputs, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == recipe.steps - 1:
            progress(f"step {step + 1}/{recipe.steps}: loss {loss.item():.3f} ({time.monotonic() - started:.0f}s)")
    return model.eval()
