"""One Metis card, measured as the Voyager SDK's LLM runner measures it: TTFT, tokens/s
and the hottest temperature sensor, for the aipu backend run in this process (no daemon,
no sockets: what the card and the host loop do).

On a machine with a card and the SDK's venv active, after `axllm MODEL` (1.5) or
`./inference_llm.py MODEL --prompt hi` (1.3/1.4) has fetched the model once:

    python bench/aipu_card.py --model llama-3-2-1b-1024-4core-static --build-root $AXELERA_FRAMEWORK/build

Each run prints the runner's summary line to stderr, in its format:

    Tokenization: 3.1ms | Prefill: 180.2ms | TTFT: 0.184s | Gen: 2.950s | Tokens/sec: 43.39 | Tokens: 128
    Core Temp: 48.0°C

and at the end one JSON object on stdout with every run and the medians. The runner's
Tokens/sec is tokens over the whole generation, TTFT included; `decode_tokens_per_s`
leaves the prefill out. Without a card, `--runtime emulator` runs the same loop on the
emulated card (a Hugging Face model directory as --model), which checks the script, not
the card: its figures say nothing about Metis speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

from harness import cli
from harness.numbers import percentile, rnd
from harness.output import run_main

# The SDK's default system prompt (its `config.GENAI_SYSTEM_PROMPT`); the runner sends it
# with every prompt, and an empty one to Velvet.
SDK_SYSTEM_PROMPT = (
    "Be concise. You are a chatbot for Axelera AI, a start-up building a state-of-the-art AI accelerator chip, "
    "called Metis. Answer user questions accurately and to the best of your ability. You run on the Metis chip."
)
TEMPERATURE_WAIT_S = 3.0  # the collector logs about once a second


def seed_summary(run: dict[str, Any]) -> str:
    """The runner's `GenerationStats.summary()` line, and its temperature line."""
    prefill_ms = run["prefill_ms"]
    prefill = f"{prefill_ms * 1000:.1f}us" if prefill_ms < 1 else f"{prefill_ms:.1f}ms"
    line = (
        f"Tokenization: {run['tokenize_ms']:.1f}ms | Prefill: {prefill} | TTFT: {run['ttft_s']:.3f}s | "
        f"Gen: {run['gen_s']:.3f}s | Tokens/sec: {run['tokens_per_s']:.2f} | Tokens: {run['tokens']}"
    )
    if run["temperature_c"] is not None:
        line += f"\nCore Temp: {run['temperature_c']:.1f}°C"
    return line


def one_run(
    backend: Any, tokenizer: Any, messages: list[dict[str, str]], max_tokens: int, stop: set[int]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    t_tokenized = time.perf_counter()
    logits = backend.prefill(1, ids)
    token = int(logits.argmax())
    t_first = time.perf_counter()
    tokens = [token]
    room = backend.info.context_length - len(ids)
    while token not in stop and len(tokens) < min(max_tokens, room):
        token = int(backend.decode([1], [token])[0].argmax())
        tokens.append(token)
    t_done = time.perf_counter()
    backend.release(1)
    gen_s = t_done - t_tokenized
    return {
        "prompt_tokens": len(ids),
        "tokens": len(tokens),
        "tokenize_ms": (t_tokenized - t0) * 1000,
        "prefill_ms": (t_first - t_tokenized) * 1000,
        "ttft_s": t_first - t_tokenized,
        "gen_s": gen_s,
        "tokens_per_s": len(tokens) / gen_s,
        "decode_tokens_per_s": (len(tokens) - 1) / (t_done - t_first) if len(tokens) > 1 else None,
        "stopped_on_end_id": tokens[-1] in stop,
        "temperature_c": backend.temperature_c(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "aipu_card", __doc__, model_help="a Metis catalog name (or, with --runtime emulator, a model directory)"
    )
    p.add_argument("--build-root", help="the SDK's build directory (default: $AXELERA_FRAMEWORK/build)")
    p.add_argument("--aipu-device", help="card index, name or comma list (default: $AXELERA_DEVICE_SELECTOR, else any)")
    p.add_argument("--tokenizer-dir", help="default: <build-root>/tokenizers/<org_model>, else the hub")
    p.add_argument("--runtime", default="real", choices=["real", "emulator"])
    p.add_argument("--prompt", default="Tell me a short story about a robot who learns to paint.")
    p.add_argument("--system-prompt", help="default: the SDK's (empty for Velvet)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> dict[str, Any]:

    from axchat.actors.backends.aipu.backend import AipuBackend
    from axchat.actors.backends.load_options import LoadOptions
    from axchat.actors.tokenizer import end_of_turn_ids, load_tokenizer
    from axchat.models.aipu_catalog import CATALOG

    t_load = time.perf_counter()
    backend = AipuBackend.load(
        args.model,
        LoadOptions(
            build_root=args.build_root,
            aipu_device=args.aipu_device,
            aipu_runtime=args.runtime,
            tokenizer_dir=args.tokenizer_dir,
        ),
    )
    try:
        tokenizer = load_tokenizer(backend.info.tokenizer or args.model)
        load_s = time.perf_counter() - t_load
        entry = CATALOG.get(args.model)
        system = args.system_prompt
        if system is None:
            system = "" if entry is not None and entry.velvet else SDK_SYSTEM_PROMPT
        messages = [{"role": "system", "content": system}, {"role": "user", "content": args.prompt}]
        stop = set(backend.info.eos_ids) | end_of_turn_ids(tokenizer)
        backend.wait_temperature(TEMPERATURE_WAIT_S)
        runs = []
        for _ in range(args.runs):
            run = one_run(backend, tokenizer, messages, args.max_tokens, stop)
            print(seed_summary(run), file=sys.stderr, flush=True)
            runs.append(run)
    finally:
        backend.close()

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return rnd(percentile(values, 50), 4)  # the 50th percentile is the median

    return {
        "bench": "aipu_card",
        "model": backend.info.model,
        "device": backend.info.device,
        "runtime": args.runtime,
        "context_length": backend.info.context_length,
        "tokenizer": backend.info.tokenizer,
        "load_s": round(load_s, 3),
        "max_tokens": args.max_tokens,
        "median": {
            key: median(key) for key in ("ttft_s", "tokens_per_s", "decode_tokens_per_s", "prefill_ms", "temperature_c")
        },
        "runs": runs,
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }


if __name__ == "__main__":
    sys.exit(run_main("aipu_card", bench, parse_args(sys.argv[1:])))
