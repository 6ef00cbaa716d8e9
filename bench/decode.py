"""Decode speed: the daemon's path against a bare engine loop and the memory-bandwidth bound.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/decode.py --model DIR [--backend llamacpp|torch] [--quant TYPE]
        [--tokens 64] [--rounds 2] [--compile]

With --backend llamacpp (the CPU default for Llama-family models) the bare loop is
llama-cpp-python's low-level API on the very GGUF file the daemon loaded (same weight
type and threads): one `llama_decode` per step of 1 or 8 sequences, greedy. Its figures
are `bare_llamacpp_tok_s_b1`/`_b8`; `torch_daemon_tok_s_b1` is a second daemon on the
torch path, measured after the first has stopped, in the same run. With --backend torch
the bare loop is transformers' (below) and the keys are `bare_tok_s_b1`/`_b8`.

One daemon is started on DIR; its status says the dtype and thread count it chose at
load, and the bare loop runs in this process with the same dtype and threads, so the
two are compared like for like. Then, --rounds times, alternating so that drift in
machine load hits both alike:

- bare loop: transformers' forward with a DynamicCache, greedy, batch 1 and batch 8
  (one forward for 8 rows of the same length), --tokens steps after a 32-token prompt;
- daemon: one client, then 8 clients at once, each a greedy request of --tokens tokens
  (ignore_eos); a client's rate is completion tokens / (done - first delta), the
  aggregate is all tokens / (last done - first delta).

step_ms_b1 and daemon_overhead_ms_per_token are the daemon's own figures (status, over
its last 64 decode steps after the batch-1 run): the forward pass, and the time between
two decode steps that the daemon spends elsewhere (sampling, actor hops).
bandwidth_bound_tok_s_b1 = a memory bandwidth measured here (a large tensor copy, bytes
read + written per second, with the daemon's thread count) / the weight bytes a decode
step reads in the daemon's dtype.

Use a model whose greedy tokens decode to text (bench/visible_model.py) so deltas
stream token by token. Prints ONE JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import cli
from harness.daemon import Daemon
from harness.machine import cpus_busy, loadavg, machine, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main
from harness.prompts import filler
from harness.stream import Stream, greedy, stream

log = Log("decode")
PROMPT_TOKENS = 32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("decode", __doc__)
    p.add_argument("--tokens", type=int, default=64, help="decode steps per measurement (default 64)")
    p.add_argument("--rounds", type=int, default=2, help="times each measurement is repeated (default 2)")
    p.add_argument("--backend", choices=("llamacpp", "torch"), default="llamacpp", help="the daemon's backend (default llamacpp)")
    p.add_argument("--quant", default=None, help="llamacpp weight type (default: the daemon's default)")
    p.add_argument("--compile", action="store_true", help="run the daemon with --compile true (torch)")
    p.add_argument("--no-torch", action="store_true", help="llamacpp: skip the torch-path daemon (no torch_daemon_tok_s_b1)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `axchat serve` argument (repeatable)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one measurement may take (default 900)")
    args = p.parse_args(argv)
    if args.tokens < 4 or args.rounds < 1:
        p.error("--tokens must be at least 4 and --rounds at least 1")
    return args


# ---------------------------------------------------------------- in this process


def copy_bandwidth(threads: int, mib: int = 512) -> float:
    """Bytes moved (read + written) per second by a large tensor copy, best of 5."""
    import torch

    torch.set_num_threads(threads)
    src = torch.ones(mib << 20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * src.nbytes / best


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class BareLoop:
    """transformers' own forward and cache, as a one-shot script would decode."""

    def __init__(self, model_dir: str, dtype: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        # transformers 5 renamed `past_key_values` to `cache` (the old name warns).
        self.cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads: every matrix once, the embedding
        table only when it is not also the output head (then one row is read)."""
        inner = self.model.model
        seen = {id(p) for p in inner.embed_tokens.parameters()} if self.model.lm_head.weight is not inner.embed_tokens.weight else set()
        return sum(p.nbytes for p in self.model.parameters() if id(p) not in seen)

    def tok_s(self, batch: int, steps: int) -> float:
        from transformers import DynamicCache

        torch = self.torch
        with torch.inference_mode():
            ids = (torch.arange(PROMPT_TOKENS)[None] * 7 % 900 + 4).repeat(batch, 1)
            cache = DynamicCache(config=self.model.config)
            out = self.model(input_ids=ids, use_cache=True, **{self.cache_kw: cache})
            token = out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(steps):
                out = self.model(input_ids=token, use_cache=True, **{self.cache_kw: cache})
                token = out.logits[:, -1:].argmax(-1)
            return batch * steps / (time.perf_counter() - t0)


class BareLlamaLoop:
    """llama-cpp-python's C API as its own batched example decodes: one context, one
    batch refilled each step with every sequence's next token, greedy."""

    def __init__(self, gguf: Path, threads: int, max_tokens: int) -> None:
        import llama_cpp

        self.ll = llama_cpp
        # llama.cpp logs every graph it builds unless told otherwise: that would time stderr.
        self._quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(self._quiet, None)
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), mparams)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = 8 * (PROMPT_TOKENS + max_tokens + 8)
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_seq_max = 8
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.model or not self.ctx:
            raise BenchError(f"llama.cpp could not load {gguf}")
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> list[int]:
        """rows: (token, position, sequence, wants logits); greedy next token per wanted row."""
        import numpy as np

        b = self.batch
        for i, (tok, pos, seq, out) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
        b.n_tokens = len(rows)
        if self.ll.llama_decode(self.ctx, b) != 0:
            raise BenchError("llama_decode failed in the bare loop")
        return [
            int(np.argmax(np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,))))
            for i, row in enumerate(rows)
            if row[3]
        ]

    def tok_s(self, batch: int, steps: int) -> float:
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)
        prompt = [i * 7 % 900 + 4 for i in range(PROMPT_TOKENS)]
        tokens = self._decode([(t, p, s, p == PROMPT_TOKENS - 1) for s in range(batch) for p, t in enumerate(prompt)])
        t0 = time.perf_counter()
        for step in range(steps):
            tokens = self._decode([(tokens[s], PROMPT_TOKENS + step, s, True) for s in range(batch)])
        return batch * steps / (time.perf_counter() - t0)

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


# ---------------------------------------------------------------- the daemon


async def clients(socket: str, n: int, args: argparse.Namespace, round_no: int) -> tuple[float, Any]:
    """n clients at once; (aggregate tokens/s, status right after)."""
    from axchat.aclient import AsyncClient
    from axchat.protocol import v1

    conns = [AsyncClient(socket, connect_timeout_s=30.0) for _ in range(n)]
    try:
        await asyncio.gather(*(c.hello() for c in conns))
        recs = await asyncio.gather(
            *(
                stream(
                    c,
                    v1.Generate(messages=[v1.ChatMessage(role="user", content=filler(18, f"r{round_no}c{i}"))], sampling=greedy(args.tokens)),
                    args.timeout,
                    f"client {i}",
                    Stream(),
                )
                for i, c in enumerate(conns)
            )
        )
        status = await conns[0].status()
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    firsts = [r.first for r in recs if r.first is not None]
    dones = [r.done_at for r in recs if r.done_at is not None]
    if len(firsts) < n or len(dones) < n:
        raise BenchError(f"{n} clients: a stream had no token deltas; use a model whose tokens decode (bench/visible_model.py)")
    tokens = sum(r.completion_tokens for r in recs)
    return tokens / (max(dones) - min(firsts)), status


def daemon_status(socket: str) -> Any:
    from axchat.client import Client

    with Client(socket, connect_timeout_s=10.0) as c:
        return c.status()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = Path(args.model)
    info = model_info(model_dir)
    busy_before = cpus_busy()
    llama = args.backend == "llamacpp"
    serve_args = ["--backend", args.backend, *(["--quant", args.quant] if args.quant else []), *args.serve_arg]
    if not llama:
        serve_args += ["--compile", "true" if args.compile else "false"]
    daemon = Daemon(str(model_dir), serve_args, log)
    samples: dict[str, list[float]] = {k: [] for k in ("bare_b1", "bare_b8", "daemon_b1", "daemon_b8", "step_ms", "overhead_ms", "step_ms_b8", "overhead_ms_b8")}
    bare: Any = None
    try:
        daemon.start(args.timeout)
        status = daemon_status(daemon.socket)
        log(f"daemon: {status.backend} {status.decode_path} path, {status.dtype}, {status.threads} threads ({status.dtype_reason})")
        if llama:
            from axchat.actors.backends.llamacpp import gguf_cache, load

            gguf = load.find_gguf(str(model_dir)) or gguf_cache.cached_path(model_dir, status.dtype)
            bare = BareLlamaLoop(gguf, status.threads, args.tokens)
            weight_bytes = gguf.stat().st_size
        else:
            bare = BareLoop(str(model_dir), status.dtype, status.threads)
            weight_bytes = bare.weight_bytes()
        bandwidth = copy_bandwidth(status.threads)
        log(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; {weight_bytes / 1e6:.0f} MB of weights per step")
        for r in range(args.rounds):
            order = ["bare", "daemon"] if r % 2 == 0 else ["daemon", "bare"]
            for what in order:
                if what == "bare":
                    samples["bare_b1"].append(bare.tok_s(1, args.tokens))
                    samples["bare_b8"].append(bare.tok_s(8, args.tokens))
                    log(f"round {r + 1}: bare {samples['bare_b1'][-1]:.1f} tok/s b1, {samples['bare_b8'][-1]:.1f} b8")
                else:
                    b1, st = asyncio.run(clients(daemon.socket, 1, args, r))
                    samples["daemon_b1"].append(b1)
                    samples["step_ms"].append(st.step_ms)
                    samples["overhead_ms"].append(st.overhead_ms_per_token)
                    b8, st8 = asyncio.run(clients(daemon.socket, 8, args, r))
                    samples["daemon_b8"].append(b8)
                    samples["step_ms_b8"].append(st8.step_ms)
                    samples["overhead_ms_b8"].append(st8.overhead_ms_per_token)
                    log(
                        f"round {r + 1}: daemon {b1:.1f} tok/s b1 (step {st.step_ms:.1f} ms + {st.overhead_ms_per_token:.2f} ms own),"
                        f" {b8:.1f} b8 (step {st8.step_ms:.1f} ms + {st8.overhead_ms_per_token:.2f} ms own)"
                    )
    finally:
        warnings = daemon.finish() if daemon.proc is not None else []
        if llama and bare is not None:
            bare.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    torch_b1 = torch_daemon_b1(model_dir, args) if llama and not args.no_torch else None
    bound = bandwidth / weight_bytes
    prefix = "bare_llamacpp" if llama else "bare"
    out: dict[str, Any] = {
        f"{prefix}_tok_s_b1": rnd(med["bare_b1"]),
        "daemon_tok_s_b1": rnd(med["daemon_b1"]),
        f"{prefix}_tok_s_b8": rnd(med["bare_b8"]),
        "daemon_tok_s_b8": rnd(med["daemon_b8"]),
    }
    if torch_b1 is not None:
        out["torch_daemon_tok_s_b1"] = rnd(torch_b1)
    out.update({
        "weight_type": status.dtype,
        "step_ms_b1": rnd(med["step_ms"], 2),
        "step_ms_b8": rnd(med["step_ms_b8"], 2),
        "bandwidth_bound_tok_s_b1": rnd(bound),
        "fraction_of_bound_b1": rnd(med["daemon_b1"] / bound, 3),
        "compile_s": status.compile_s,
        "daemon_overhead_ms_per_token": rnd(med["overhead_ms"], 3),
        "context": {
            "daemon_vs_bare_b1": rnd(med["daemon_b1"] / med["bare_b1"], 2),
            "daemon_vs_bare_b8": rnd(med["daemon_b8"] / med["bare_b8"], 2),
            "daemon_vs_torch_daemon_b1": rnd(med["daemon_b1"] / torch_b1, 2) if torch_b1 else None,
            "backend": status.backend,
            "dtype": status.dtype,
            "threads": status.threads,
            "decode_path": status.decode_path,
            "dtype_reason": status.dtype_reason,
            "compiled": status.compiled,
            "bandwidth_gb_s": rnd(bandwidth / 1e9, 1),
            "weight_mb_per_step": rnd(weight_bytes / 1e6, 1),
            "tokens": args.tokens,
            "rounds": args.rounds,
            "samples": {k: [rnd(x, 2) for x in v] for k, v in samples.items()},
            "model": info,
            "machine": machine(),
            "loadavg_after": loadavg(),
            "cpus_busy_before": busy_before,
            "daemon_ready_s": rnd(daemon.ready_s),
            "daemon_warnings": warnings,
        },
    })
    return out


def torch_daemon_b1(model_dir: Path, args: argparse.Namespace) -> float:
    """The torch path's batch-1 rate in this run (its own daemon, after the first stopped)."""
    daemon = Daemon(str(model_dir), ["--backend", "torch", "--compile", "false", *args.serve_arg], log, label="torch daemon")
    try:
        daemon.start(args.timeout)
        rates = [asyncio.run(clients(daemon.socket, 1, args, 10 + r))[0] for r in range(args.rounds)]
    finally:
        daemon.finish()
    log(f"torch daemon: {statistics.median(rates):.1f} tok/s b1")
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    return run_main("decode", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
