"""How often each llamacpp weight type picks the same greedy token as f32 weights.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/quant_agreement.py --model DIR [--tokens 64] [--prompts 4] [--threads 1] [--rounds 3]

DIR is a Hugging Face Llama-family directory; it is converted (and cached) at every
weight type. For each prompt, f32 weights decode `--tokens` greedy tokens; each other type
is then fed the same tokens (teacher forcing, so one early difference does not make every
later token differ) and `agreement` is the share of steps where its argmax equals f32's.
`first_divergence` is the first step where free-running greedy output differs (None: it
never does within `--tokens`). `decode_tok_s_b1` times, for every type in the same run
(rounds interleaved so load drift hits all alike, median), one sequence's greedy decode
steps through the backend's engine with `--threads`: which type decodes fastest here. Random-weight test models have nearly flat logits, so
their figures are a lower bound of what a trained model shows.
Prints ONE JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import cli
from harness.machine import machine, model_info
from harness.numbers import rnd
from harness.output import Log, run_main

log = Log("quant_agreement")
TYPES = ("f16", "bf16", "q8_0", "q4_k_m")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("quant_agreement", __doc__, model_help="local Hugging Face Llama-family directory")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the speed figure")
    return p.parse_args(argv)


def prompts(n: int) -> list[list[int]]:
    return [[(7 * i + 31 * k + 5) % 900 + 4 for i in range(24 + 8 * k)] for k in range(n)]


def decode_rate(backend: Any, steps: int) -> float:
    import numpy as np

    token = int(np.argmax(backend.prefill(0, prompts(1)[0])))
    started = time.perf_counter()
    for _ in range(steps):
        token = int(np.argmax(backend.decode([0], [token])[0]))
    rate = steps / (time.perf_counter() - started)
    backend.release(0)
    return rate


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from axchat.actors.backends.llamacpp import load

    def engine_for(kind: str) -> Any:
        started = time.monotonic()
        backend = load.load(args.model, quant=kind, threads=args.threads, prefix_cache_bytes=0)
        log(f"{kind}: loaded in {time.monotonic() - started:.1f}s ({backend.info.dtype_reason})")
        return backend

    ref = engine_for("f32")
    reference: list[list[int]] = []
    for seq, ids in enumerate(prompts(args.prompts)):
        out = [int(np.argmax(ref.prefill(seq, ids)))]
        while len(out) < args.tokens:
            out.append(int(np.argmax(ref.decode([seq], [out[-1]])[0])))
        ref.release(seq)
        reference.append(out)
    ref.close()
    results: dict[str, Any] = {}
    speed: dict[str, list[float]] = {k: [] for k in ("f32", *TYPES)}
    for kind in TYPES:
        b = engine_for(kind)
        same = total = 0
        divergence: list[int | None] = []
        for seq, (ids, want) in enumerate(zip(prompts(args.prompts), reference, strict=True)):
            got = [int(np.argmax(b.prefill(seq, ids)))]
            for token in want[:-1]:  # fed f32's tokens
                got.append(int(np.argmax(b.decode([seq], [token])[0])))
            b.release(seq)
            same += sum(g == w for g, w in zip(got, want, strict=True))
            total += len(want)
            diff = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
            divergence.append(diff[0] if diff else None)
        b.close()
        results[kind] = {"agreement": rnd(same / total, 3), "first_divergence": divergence}
        log(f"{kind}: {same}/{total} greedy tokens as f32")
    backends = {kind: engine_for(kind) for kind in speed}
    for _ in range(args.rounds):
        for kind, b in backends.items():
            speed[kind].append(decode_rate(b, args.tokens))
        log("speed round: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in speed.items()))
    for b in backends.values():
        b.close()
    return {
        "agreement_with_f32": {k: v["agreement"] for k, v in results.items()},
        "decode_tok_s_b1": {k: rnd(statistics.median(v)) for k, v in speed.items()},
        "context": {
            "per_type": results,
            "tokens": args.tokens,
            "prompts": args.prompts,
            "model": model_info(Path(args.model)),
            "machine": machine(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    return run_main("quant_agreement", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
