"""Prefill and decode speed of two or more llama.cpp builds, on the same GGUF, same threads.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_builds.py --model DIR \
        --build before=/path/to/old.whl --build after=/path/to/new.whl [--quant q8_0 ...] [--rounds 3]

Each `--build NAME=WHEEL` is a llama-cpp-python wheel (as `axchat.engine_build` keeps them
in ~/.cache/axchat/engine); it is unpacked once and put first on PYTHONPATH of a child
process that measures, through the daemon's own `Engine` (no daemon):

- `prefill_tok_s`: one 512-token prompt at position 0, in one forward;
- `decode_tok_s_b1`: one sequence's greedy decode steps (--tokens);
- `decode_tok_s_b8`: 8 sequences, one decode step of 8 rows at a time (--tokens steps).

Rounds alternate the builds (so load drift hits all alike); medians per build and
weight type, and `ratio_<key>` = each build over the first one named. The engine's
system-info line is reported per build (which kernels it has). Prints ONE JSON object
on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from harness import cli
from harness.machine import machine, model_info
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main

log = Log("engine_builds")
KEYS = ("prefill_tok_s", "decode_tok_s_b1", "decode_tok_s_b8")


def child(model: str, kind: str, tokens: int, threads: int) -> dict[str, Any]:
    """Runs with one build first on sys.path."""
    import llama_cpp
    import numpy as np

    from axchat.actors.backends.llamacpp import engine as engine_mod
    from axchat.actors.backends.llamacpp.load import gguf_for

    gguf = gguf_for(Path(model), kind, threads)
    engine = engine_mod.Engine(gguf, cells=4096, sequences=9, batch=512, threads=threads, exact=kind == "f32")
    prompt = [(7 * i + 5) % 900 + 4 for i in range(512)]
    engine.run(prompt[:16], range(16), [8] * 16, [15])  # warm-up
    engine.forget(8)
    started = time.perf_counter()
    engine.run(prompt, range(512), [0] * 512, [511])
    prefill = 512 / (time.perf_counter() - started)
    engine.forget(0)

    engine.run(prompt[:32], range(32), [0] * 32, [31])
    started = time.perf_counter()
    for i in range(tokens):
        engine.run([prompt[i]], [32 + i], [0], [0])
    b1 = tokens / (time.perf_counter() - started)
    engine.forget(0)

    for s in range(8):
        engine.run(prompt[s : s + 32], range(32), [s] * 32, [31])
    started = time.perf_counter()
    for i in range(tokens):
        engine.run([prompt[i]] * 8, [32 + i] * 8, list(range(8)), list(range(8)))
    b8 = 8 * tokens / (time.perf_counter() - started)
    engine.close()
    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    assert np.isfinite(prefill)
    return {"prefill_tok_s": prefill, "decode_tok_s_b1": b1, "decode_tok_s_b8": b8, "system_info": info, "file": llama_cpp.__file__}


def bench(args: Any) -> dict[str, Any]:
    model = cli.model_dir(args.model)
    builds: dict[str, Path] = {}
    unpacked = Path(tempfile.mkdtemp(prefix="engine-builds-"))
    for spec in args.build:
        name, _, wheel = spec.partition("=")
        if not wheel or not Path(wheel).is_file():
            raise BenchError(f"--build {spec!r}: expected NAME=WHEEL, an existing wheel file")
        builds[name] = unpacked / name
        with zipfile.ZipFile(wheel) as z:
            z.extractall(builds[name])
    if len(builds) < 2:
        raise BenchError("name at least two builds to compare")
    runs: dict[str, dict[str, dict[str, list[float]]]] = {n: {k: {key: [] for key in KEYS} for k in args.quant} for n in builds}
    info: dict[str, str] = {}
    here = Path(__file__).resolve().parent
    for r in range(args.rounds):
        for kind in args.quant:
            order = list(builds) if r % 2 == 0 else list(reversed(builds))
            for name in order:
                log(f"round {r + 1}/{args.rounds}: {name} {kind}")
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(builds[name]), str(here)])}
                done = subprocess.run(
                    [sys.executable, __file__, "--child", "--model", str(model), "--quant", kind,
                     "--tokens", str(args.tokens), "--threads", str(args.threads)],
                    env=env, capture_output=True, text=True, timeout=args.timeout,
                )  # fmt: skip
                if done.returncode != 0:
                    raise BenchError(f"build {name} ({kind}) exited {done.returncode}: {done.stderr.strip()[-1500:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                if not result["file"].startswith(str(builds[name])):
                    raise BenchError(f"build {name} imported llama_cpp from {result['file']}, not its wheel")
                info[name] = result["system_info"]
                for key in KEYS:
                    runs[name][kind][key].append(result[key])
    first = next(iter(builds))
    out: dict[str, Any] = {"bench": "engine_builds", "model": model_info(model), "machine": machine(), "threads": args.threads,
                           "tokens": args.tokens, "rounds": args.rounds, "system_info": info, "builds": {}}  # fmt: skip
    for name in builds:
        per: dict[str, Any] = {}
        for kind in args.quant:
            med = {key: statistics.median(runs[name][kind][key]) for key in KEYS}
            base = {key: statistics.median(runs[first][kind][key]) for key in KEYS}
            per[kind] = {**{k: rnd(v) for k, v in med.items()}, **{f"ratio_{k}": rnd(med[k] / base[k], 3) for k in KEYS},
                         "runs": {k: [rnd(x) for x in v] for k, v in runs[name][kind].items()}}  # fmt: skip
        out["builds"][name] = per
    return out


def main() -> int:
    p = cli.parser("engine_builds", __doc__)
    p.add_argument("--build", action="append", default=[], help="NAME=WHEEL (at least two; the first is the baseline)")
    p.add_argument("--quant", nargs="+", default=["q8_0"], help="weight types (default q8_0)")
    p.add_argument("--tokens", type=int, default=64, help="decode steps per measurement (default 64)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads (default: every core)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one child may take (default 900)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.quant[0], args.tokens, args.threads)))
        return 0
    return run_main("engine_builds", bench, args)


if __name__ == "__main__":
    sys.exit(main())
