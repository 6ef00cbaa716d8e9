"""Loading the `llamacpp` backend: find or make the GGUF file (a local .gguf as is; a
Hugging Face Llama-family directory converted once into the store's cache, quantized
by libllama for q8_0 and q4_k_m), size the KV cells, and describe what runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from axchat import host_memory
from axchat.actors.backends.base import BackendInfo, ModelLoadError
from axchat.actors.backends.llamacpp import gguf_cache, gguf_convert, memory_plan, thread_choice, tokenizer_match
from axchat.host_cores import default_threads
from axchat.models import gguf_header, model_files, store
from axchat.models.gguf_header import FILE_TYPES
from axchat.models.model_files import ModelFileError

if TYPE_CHECKING:
    from axchat.actors.backends.llamacpp.backend import LlamaCppBackend

log = logging.getLogger(__name__)

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_k_m")
# Measured with bench/decode.py on this project's 2-core CPU (docs/performance.md): q8_0 decodes
# fastest at batch 1 on both benched shapes, and llama.cpp's perplexity tables put it
# within noise of f16.
DEFAULT_WEIGHT_TYPE = "q8_0"
_FROM_DTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
BATCH_TOKENS = 512  # tokens one llama_decode takes; longer feeds are split
PREFILL_CHUNK = 256


def weight_type(quant: str, dtype: str) -> str:
    """--quant wins; else an explicit --dtype names the float type; else the default."""
    if quant != "auto":
        if quant not in WEIGHT_TYPES:
            raise ModelLoadError(f"unknown weight type {quant!r}; choose {', '.join(WEIGHT_TYPES)}")
        return quant
    return _FROM_DTYPE.get(dtype, DEFAULT_WEIGHT_TYPE)


def find_gguf(model: str) -> Path | None:
    """A .gguf file, or a directory with exactly one .gguf and no Hugging Face weights."""
    return store.gguf_file(Path(model).expanduser())


def is_llama_family(model: str) -> bool:
    """A local Hugging Face directory the converter reads."""
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        return False
    try:
        return gguf_convert.convertible(gguf_convert.read_config(path))
    except gguf_convert.ConversionError:
        return False


def _percent_logger(what: str) -> Callable[[float], None]:
    shown = [-1]

    def tell(fraction: float) -> None:
        step = int(fraction * 10)
        if step > shown[0]:
            shown[0] = step
            log.info("%s: %d%%", what, step * 10)

    return tell


def gguf_for(model_dir: Path, kind: str, threads: int) -> Path:
    """The cached GGUF of `model_dir` at `kind`, converted (and quantized) on first use."""
    if kind in gguf_convert.FLOAT_TYPES:

        def make(src: Path, out: Path) -> None:
            gguf_convert.convert(src, out, kind, _percent_logger(f"converting {src.name} to GGUF {kind}"))

    else:
        from axchat.actors.backends.llamacpp import quantize

        config = gguf_convert.read_config(model_dir)
        # Quantized from a float file that loses nothing of the source's weights.
        base_kind = "bf16" if (config.get("dtype") or config.get("torch_dtype")) == "bfloat16" else "f32"

        def make(src: Path, out: Path) -> None:
            base = gguf_for(src, base_kind, threads)
            log.info("quantizing %s to %s with libllama", src.name, kind)
            try:
                quantize.quantize(base, out, kind, threads)
            except quantize.QuantizeError as exc:
                raise ModelLoadError(f"cannot quantize {src.name} to {kind}: {exc}") from None

    started = time.monotonic()
    try:
        path, made = gguf_cache.ensure(model_dir, kind, make)
    except (gguf_convert.ConversionError, ModelFileError, OSError) as exc:
        raise ModelLoadError.because(f"cannot convert {model_dir} to GGUF", exc) from None
    if made:
        log.info("GGUF %s of %s written in %.1fs: %s", kind, model_dir.name, time.monotonic() - started, path)
    return path


def convert_if_needed(model: str, quant: str, dtype: str, threads: int | None, progress: Callable[[str], None]) -> None:
    """The load's `convert` stage: make the cached GGUF of a Hugging Face directory now,
    saying so, when there is none yet (the next starts skip this)."""
    if find_gguf(model) is not None or not is_llama_family(model):
        return
    kind = weight_type(quant, dtype)
    try:
        cached = gguf_cache.cached_path(Path(model).expanduser(), kind)
    except ModelFileError as exc:  # the cache key hashes the weights the directory names
        raise ModelLoadError(str(exc)) from None
    if not cached.is_file():
        progress("convert")
        gguf_for(Path(model).expanduser(), kind, threads or default_threads())


def _eos_ids(model_dir: Path | None, meta: dict[str, str]) -> tuple[int, ...]:
    ids = model_files.declared_eos_ids(model_dir) if model_dir is not None else []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        if not ids and key in meta:
            ids.append(int(meta[key]))
    return tuple(int(i) for i in ids)


def load(
    model: str,
    *,
    quant: str = "auto",
    dtype: str = "auto",
    context: int | None = None,
    threads: int | None = None,
    max_batch: int = 8,
    prefix_cache_bytes: int = 256 << 20,
    running_kv_bytes: int = 256 << 20,
    available_bytes: int | None = None,
    draft_model: str | None = None,
) -> LlamaCppBackend:
    """`running_kv_bytes`: KV for running sequences, enough for every one of `max_batch`
    to fill the context on small models (on larger ones they share it), never less than
    one context. `available_bytes` (default: what the host has free) bounds the plan.
    `draft_model`: a smaller model of the same vocabulary that proposes tokens, with as
    many cells as the model's (its cells are smaller)."""
    from axchat.actors.backends.llamacpp import engine as engine_mod
    from axchat.actors.backends.llamacpp.backend import LlamaCppBackend

    measure_threads = threads is None
    threads = threads or default_threads()
    gguf, hf_dir = model_gguf(model, quant, dtype, threads)
    draft_gguf = None if draft_model is None else draft_gguf_for(draft_model, gguf, quant, dtype, threads)
    meta = read_metadata(gguf)
    kind = FILE_TYPES.get(int(meta.get("general.file_type", "-1")), f"file type {meta.get('general.file_type', '?')}")
    if hf_dir is None and quant != "auto" and quant != kind:
        log.info("%s holds %s weights; --quant %s applies to converted models only", gguf.name, kind, quant)
    arch = meta.get("general.architecture", "llama")
    trained = int(meta.get(f"{arch}.context_length", "2048"))
    if context is not None and context > trained:
        raise ModelLoadError(f"--context {context} is more than the model's {trained} positions")
    ctx_len = context or trained
    exact = kind == "f32"
    per_cell = bytes_per_cell(meta, arch, 4 if exact else 2)
    running = min(ctx_len * max_batch, max(ctx_len, running_kv_bytes // per_cell))
    # Kept conversations live in host memory, outside the pool (backend.py says why).
    kept = min(prefix_cache_bytes, ctx_len * 4 * per_cell)
    cells = -(-running // 256) * 256
    draft_meta = {} if draft_gguf is None else read_metadata(draft_gguf)
    plan = memory_plan.MemoryPlan(
        weights_bytes=gguf.stat().st_size,
        running_kv_bytes=cells * per_cell,
        prefix_kv_bytes=kept,
        compute_bytes=memory_plan.compute_bytes(meta, arch, BATCH_TOKENS, cells, exact),
        draft_bytes=0 if draft_gguf is None else _draft_bytes(draft_gguf, draft_meta, cells),
    )
    memory_plan.check(
        plan,
        host_memory.available_bytes() if available_bytes is None else available_bytes,
        ctx_len=ctx_len,
        running_set_by_context=running_kv_bytes // per_cell < ctx_len,
    )
    engine = _engine(engine_mod, gguf, cells, max_batch, threads, exact)
    threads_reason = f"{threads} threads as asked"
    if measure_threads and threads > 1:
        threads, threads_reason = thread_choice.choose(engine, [threads, 1])
    draft = None
    if draft_gguf is not None:
        from axchat.actors.backends.llamacpp.draft_model import DraftModel

        try:
            draft = DraftModel(_engine(engine_mod, draft_gguf, cells, max_batch, threads, _is_f32(draft_meta)), max_batch)
        except BaseException:
            engine.close()
            raise
        threads_reason += f"; draft model {draft_gguf.name}"
        log.info("draft model %s proposes tokens: its own context of %d KV cells", draft_gguf.name, draft.engine.cells)
    # Our conversion names a pre-tokenizer only where libllama's ids are the tokenizer's.
    same_ids = hf_dir is not None and meta.get("tokenizer.ggml.pre", tokenizer_match.NO_MATCH) != tokenizer_match.NO_MATCH
    info = BackendInfo(
        backend="llamacpp",
        model=_display_name(model),
        device="cpu",
        dtype=kind,
        context_length=ctx_len,
        vocab_size=engine.vocab_size,
        eos_ids=_eos_ids(hf_dir, meta),
        tokenizer=None if hf_dir is not None else tokenizer_source(gguf),
        decode_path="llama.cpp",
        dtype_reason=f"weights {kind} ({gguf.name}), KV {'f32, no flash attention' if exact else 'f16'}, {cells} cells; {threads_reason}",
        threads=threads,
        weights_bytes=plan.weights_bytes,
        running_kv_bytes=plan.running_kv_bytes,
        prefix_kv_bytes=plan.prefix_kv_bytes,
        vocab_gguf=str(gguf) if same_ids else None,
    )
    # "as TYPE, N threads": the wording of the torch path's line, which the benches read.
    log.info(
        "loaded %s on llama.cpp as %s, %d thread%s, %d KV cells", info.model, kind, threads, "s" * (threads != 1), engine.cells
    )
    log.info(
        "memory plan: weights %.0f MiB, running KV %.0f MiB, kept-prefix KV %.0f MiB, buffers ~%.0f MiB, draft model %.0f MiB",
        *(
            b / memory_plan.MIB
            for b in (plan.weights_bytes, plan.running_kv_bytes, plan.prefix_kv_bytes, plan.compute_bytes, plan.draft_bytes)
        ),
    )
    return LlamaCppBackend(
        engine,
        info,
        max_batch=max_batch,
        prefill_chunk=PREFILL_CHUNK,
        prefix_cache_bytes=kept,
        draft=draft,
    )


def model_gguf(model: str, quant: str, dtype: str, threads: int) -> tuple[Path, Path | None]:
    """The GGUF file `model` names, or its Hugging Face directory's converted one (and
    that directory)."""
    gguf = find_gguf(model)
    if gguf is not None:
        return gguf, None
    hf_dir = Path(model).expanduser()
    if not (hf_dir / "config.json").is_file():
        raise ModelLoadError(f"cannot load a model config from {model}: no config.json (nor one .gguf file)")
    if not is_llama_family(model):
        raise ModelLoadError(f"{model} is neither a GGUF file nor a Llama-family model directory")
    return gguf_for(hf_dir, weight_type(quant, dtype), threads), hf_dir


def draft_gguf_for(draft_model: str, gguf: Path, quant: str, dtype: str, threads: int) -> Path:
    """The draft model's GGUF (made as the model's is), refused in one line unless its
    vocabulary is the model's (`gguf`)."""
    from axchat.actors.backends.llamacpp import engine as engine_mod
    from axchat.actors.backends.llamacpp import same_vocabulary

    try:
        draft, _ = model_gguf(draft_model, quant, dtype, threads)
    except ModelLoadError as exc:
        raise ModelLoadError(f"--draft-model: {exc}") from None
    try:
        why = same_vocabulary.difference(same_vocabulary.of_gguf(gguf), same_vocabulary.of_gguf(draft))
    except engine_mod.EngineError as exc:
        raise ModelLoadError(f"--draft-model: {exc}") from None
    if why is not None:
        raise ModelLoadError(refused_draft(draft_model, why))
    return draft


def refused_draft(draft_model: str, why: str) -> str:
    return f"--draft-model {draft_model} has another vocabulary than the model ({why}): a draft model must share it"


def _is_f32(meta: dict[str, str]) -> bool:
    return FILE_TYPES.get(int(meta.get("general.file_type", "-1"))) == "f32"


def _draft_bytes(gguf: Path, meta: dict[str, str], cells: int) -> int:
    """The draft model's weights, its KV for `cells` and its buffers."""
    arch = meta.get("general.architecture", "llama")
    exact = _is_f32(meta)
    per_cell = bytes_per_cell(meta, arch, 4 if exact else 2)
    return gguf.stat().st_size + cells * per_cell + memory_plan.compute_bytes(meta, arch, BATCH_TOKENS, cells, exact)


def read_metadata(gguf: Path) -> dict[str, str]:
    """The GGUF's key/values as libllama reads them (its header and vocabulary only), or
    its refusal as a ModelLoadError line."""
    from axchat.actors.backends.llamacpp import engine as engine_mod

    try:
        return engine_mod.read_metadata(gguf)
    except engine_mod.EngineError as exc:
        raise ModelLoadError(_refused(gguf, exc)) from None


def _refused(gguf: Path, exc: Exception) -> str:
    """libllama's refusal of a GGUF in one line, naming the architecture its header
    declares: a model newer than this llama.cpp build is the usual cause (Ollama's store
    holds models its own newer engine runs), and the header says which one it is."""
    try:
        arch = gguf_header.read_facts(gguf).get("general.architecture")
    except ModelFileError:
        return str(exc)
    if not isinstance(arch, str):
        return str(exc)
    import importlib.metadata  # only here: it imports zipfile, email, csv...

    try:
        build = f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
    except importlib.metadata.PackageNotFoundError:
        build = "this llama.cpp build"
    return f"{exc}: its architecture is {arch!r}, which {build} may not know (a newer llama-cpp-python may)"


def bytes_per_cell(meta: dict[str, str], arch: str, kv_bytes: int) -> int:
    """KV bytes one token of one sequence takes: K and V in every layer."""
    heads = int(meta.get(f"{arch}.attention.head_count", "1"))
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", str(heads)))
    head_dim = int(meta.get(f"{arch}.attention.key_length", "0")) or int(meta[f"{arch}.embedding_length"]) // heads
    return int(meta[f"{arch}.block_count"]) * 2 * kv_heads * head_dim * kv_bytes


def _engine(engine_mod, gguf: Path, cells: int, sequences: int, threads: int, exact: bool):  # type: ignore[no-untyped-def]
    try:
        return engine_mod.Engine(gguf, cells=cells, sequences=sequences, batch=BATCH_TOKENS, threads=threads, exact=exact)
    except engine_mod.EngineError as exc:
        raise ModelLoadError(str(exc)) from None


def tokenizer_source(gguf: Path) -> str:
    """A Hugging Face tokenizer beside the file if there is one, else the file itself
    (transformers reads a GGUF's tokenizer)."""
    if (gguf.parent / "tokenizer.json").is_file() or (gguf.parent / "tokenizer_config.json").is_file():
        return str(gguf.parent)
    return str(gguf)


def _display_name(model: str) -> str:
    path = Path(model).expanduser()
    if not path.exists():
        return model
    resolved = path.resolve()
    return resolved.stem if resolved.suffix == ".gguf" else resolved.name
