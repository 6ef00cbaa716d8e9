"""Device backend on Hugging Face transformers: any causal LM, on CPU or CUDA."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as transformers_logging

from axchat.actors.backends import decode_tuning, lean_llama
from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend, ModelLoadError
from axchat.actors.backends.prefix_store import PrefixStore
from axchat.host_cores import default_threads

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The dtype to load weights in. On CPU "auto" loads float32: the lean path then
    measures float32 against bfloat16 (decode_tuning); the generic path keeps float32."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose auto, {', '.join(_DTYPES)}") from None


def model_display_name(model: str) -> str:
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or (os.sep in model and Path(model).expanduser().exists())


def load_config(model: str) -> Any:
    """The model's config, or a one-line ModelLoadError saying what is wrong."""
    path = Path(model).expanduser()
    if _looks_like_path(model) and not path.exists():
        raise ModelLoadError(f"model path {model} does not exist")
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ModelLoadError.because(f"cannot load a model config from {model}", exc) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{model} is a {config.model_type!r} model, not a causal language model")
    return config


def load(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    context: int | None = None,
    threads: int | None = None,
    lanes: int | None = None,
    max_batch: int = 8,
    prefix_cache_bytes: int = 256 << 20,
    compile: bool = False,
    lean: bool = True,
) -> DeviceBackend:
    """The lean backend for Llama-family models (unless `lean` is False), else the
    generic one. `threads` None: measured at load from the usable cores. `lanes`
    (lean path only) with `threads`: exactly that plan, as a reload after keep-alive
    asks for the one measured at start-up."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    torch.set_num_threads(threads or default_threads())
    config = load_config(model)
    transformers_logging.disable_progress_bar()  # a progress bar is noise in a service log
    try:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError.because(f"cannot load model weights from {model}", exc) from None
    lm = lm.to(device).eval()  # type: ignore[arg-type]  # transformers' stubs mistype .to()
    model_context = int(getattr(config, "max_position_embeddings", 0) or 2048)
    if context is not None and context > model_context:
        raise ModelLoadError(f"--context {context} is more than the model's {model_context} positions")
    eos = lm.generation_config.eos_token_id
    eos_ids = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    info = BackendInfo(
        backend="torch",
        model=model_display_name(model),
        device=device,
        dtype=str(torch_dtype).removeprefix("torch."),
        context_length=context or model_context,
        vocab_size=int(config.vocab_size),
        eos_ids=eos_ids,
        decode_path="generic",
        threads=torch.get_num_threads(),
    )
    if lean and lean_llama.supports(lm):
        return _load_lean(lm, info, dtype, threads, lanes, max_batch, prefix_cache_bytes, compile)
    log.info("loaded %s on %s as %s, %d threads", info.model, device, info.dtype, torch.get_num_threads())
    return TorchBackend(lm, info, max_batch, prefix_cache_bytes=prefix_cache_bytes)


def _load_lean(
    lm: Any, info: BackendInfo, dtype: str, threads: int | None, lanes: int | None, max_batch: int,
    prefix_cache_bytes: int, compile: bool,
) -> DeviceBackend:
    from axchat.actors.backends.lean_backend import LeanTorchBackend

    dtypes = [lm.dtype]
    if dtype == "auto" and info.device == "cpu":
        dtypes.append(torch.bfloat16)
    if threads and lanes:
        candidates = [decode_tuning.Plan(threads, lanes)]
    else:
        # `--threads N` (else the usable cores) is the budget; how to spend it is measured.
        # Lanes only on the CPU (a GPU has its own parallelism) and not compiled (a
        # compiled graph cannot hand work to other threads).
        candidates = decode_tuning.plans(threads or default_threads(), lanes=info.device == "cpu" and not compile)
    tuned = decode_tuning.choose(lambda d: lean_llama.LeanLlama(lm, max_batch, info.context_length, d), dtypes, candidates)
    lean = tuned.lean
    if compile:
        lean.compile()
    warm_s = decode_tuning.warm_up(lean)
    info = replace(
        info,
        dtype=str(tuned.dtype).removeprefix("torch."),
        dtype_reason=tuned.reason,
        decode_path="lean",
        threads=tuned.plan.threads,
        lanes=tuned.plan.lanes,
        compiled=compile,
        compile_s=round(warm_s, 2) if compile else 0.0,
    )
    log.info(
        "loaded %s on %s as %s, %s (lean Llama path; %s); %s",
        info.model, info.device, info.dtype, tuned.plan, tuned.reason,
        f"compiled in {warm_s:.1f}s" if compile else f"not compiled, warmed up in {warm_s:.1f}s",
    )
    return LeanTorchBackend(lean, info, prefill_chunk=tuned.prefill_chunk, prefix_cache_bytes=prefix_cache_bytes)


def _kv(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A full-attention cache layer's key and value tensors."""
    return layer.keys, layer.values


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad the sequence axis (dim 2 of [batch, heads, seq, dim]) with n zeros in front."""
    return torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t


class TorchBackend(DeviceBackend):
    def __init__(
        self, model: Any, info: BackendInfo, max_batch: int, prefill_chunk: int = 256, prefix_cache_bytes: int = 0
    ) -> None:
        self.model = model
        self.info = info
        self.capabilities = Capabilities(
            max_batch=max_batch,
            kv_survives_switch=True,
            prefill_chunk=prefill_chunk,
            prefix_cache=prefix_cache_bytes > 0,
        )
        self._prefixes: PrefixStore[DynamicCache] = PrefixStore(prefix_cache_bytes)
        self._device = torch.device(info.device)
        self._caches: dict[int, DynamicCache] = {}
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns,
        # then goes away); ask the model which one it takes.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @torch.inference_mode()
    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        self._caches[seq_id] = DynamicCache(config=self.model.config)
        return self._feed(seq_id, token_ids)

    @torch.inference_mode()
    def extend(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        return self._feed(seq_id, token_ids)

    def _feed(self, seq_id: int, token_ids: Sequence[int]) -> np.ndarray:
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self._device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: self._caches[seq_id]})
        return out.logits[0, -1].float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        if len(seq_ids) == 1:
            cache = self._caches[seq_ids[0]]
            ids = torch.tensor([[token_ids[0]]], dtype=torch.long, device=self._device)
            out = self.model(input_ids=ids, use_cache=True, **{self._cache_kw: cache})
            return out.logits[:, -1].float().cpu().numpy()
        return self._decode_batch(seq_ids, token_ids)

    def _decode_batch(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """One forward for several sequences of different lengths.

        Each sequence's KV is left-padded to the longest and stacked; the attention
        mask hides the padding and explicit position ids keep every sequence's own
        positions, so each row computes what it would alone. Afterwards the new KV is
        cut back per sequence. The copy costs memory bandwidth, not extra forwards.
        """
        caches = [self._caches[s] for s in seq_ids]
        lengths = [c.get_seq_length() for c in caches]
        longest = max(lengths)
        n_layers = len(caches[0].layers)
        stacked = []
        for layer in range(n_layers):
            kv = [_kv(c.layers[layer]) for c in caches]
            keys = [_left_pad(k, longest - n) for (k, _), n in zip(kv, lengths, strict=True)]
            values = [_left_pad(v, longest - n) for (_, v), n in zip(kv, lengths, strict=True)]
            stacked.append((torch.cat(keys), torch.cat(values)))
        batch_cache = DynamicCache(stacked, config=self.model.config)
        mask = torch.zeros((len(seq_ids), longest + 1), dtype=torch.long, device=self._device)
        for row, n in enumerate(lengths):
            mask[row, longest - n :] = 1
        positions = torch.tensor([[n] for n in lengths], dtype=torch.long, device=self._device)
        ids = torch.tensor([[t] for t in token_ids], dtype=torch.long, device=self._device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: batch_cache},
        )
        for row, (seq_id, n) in enumerate(zip(seq_ids, lengths, strict=True)):
            start = longest - n
            per_seq = [
                (k[row : row + 1, :, start:].clone(), v[row : row + 1, :, start:].clone())
                for k, v in (_kv(layer) for layer in batch_cache.layers)
            ]
            self._caches[seq_id] = DynamicCache(per_seq, config=self.model.config)
        return out.logits[:, -1].float().cpu().numpy()

    @torch.inference_mode()
    def start(self, seq_id: int, prompt_ids: Sequence[int], salt: str) -> int:
        found = self._prefixes.longest_match(salt, list(prompt_ids), limit=len(prompt_ids) - 1)
        if found is None:
            self._caches[seq_id] = DynamicCache(config=self.model.config)
            return 0
        kept, n = found
        # A copy: the kept entry stays intact for other branches of the conversation.
        layers = [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in (_kv(layer) for layer in kept.layers)]
        self._caches[seq_id] = DynamicCache(layers, config=self.model.config)
        return n

    def release(self, seq_id: int, keep: tuple[str, list[int]] | None = None) -> None:
        cache = self._caches.pop(seq_id, None)
        if cache is None or keep is None or not self.capabilities.prefix_cache:
            return
        salt, tokens = keep
        if cache.get_seq_length() != len(tokens):
            return  # a sequence cut short mid-step: its KV and ids disagree, keep nothing
        nbytes = sum(k.nbytes + v.nbytes for k, v in (_kv(layer) for layer in cache.layers))
        self._prefixes.put(salt, tokens, cache, nbytes)

    def forget_client(self, salt: str) -> None:
        self._prefixes.forget(salt)

    def prefix_cache_usage(self) -> tuple[int, int]:
        return len(self._prefixes), self._prefixes.bytes

    def live_sequences(self) -> int:
        return len(self._caches)

    def close(self) -> None:
        self._caches.clear()
        self.model = None
