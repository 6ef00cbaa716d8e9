"""One-shot generation the way the seed script (`inference_llm.py --prompt`) does it:
a fresh process imports transformers, loads the model and tokenizer, applies the chat
template and streams greedy tokens to stdout through a TextStreamer.

Used by bench/oneshot.py; runnable alone:

    HF_HUB_OFFLINE=1 python bench/_seed_style.py --model DIR --prompt "Hello" --max-tokens 32

stdout carries only the generated text (what the streamer prints), so the first byte
on stdout is the first generated text. Timings for the benchmark go to stderr as one
line starting with PHASES_TAG, measured with time.monotonic() (CLOCK_MONOTONIC, shared
by all processes on Linux) against $ONESHOT_T0, the parent's clock just before it
started this process.
"""

from __future__ import annotations

import time

_T_MAIN = time.monotonic()  # before any heavy import: interpreter start-up is behind us

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

PHASES_TAG = "ONESHOT_PHASES "


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto = what from_pretrained picks by itself (the config's dtype in transformers 5)",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    t_imported = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    t_loaded = time.monotonic()

    first_text: list[float] = []

    class Streamer(TextStreamer):
        """TextStreamer, unchanged, plus a note of when it first prints text."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text and not first_text:
                first_text.append(time.monotonic())
            super().on_finalized_text(text, stream_end=stream_end)

    messages = [{"role": "user", "content": args.prompt}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    streamer = Streamer(tokenizer, skip_prompt=True)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            streamer=streamer,
            do_sample=False,
            max_new_tokens=args.max_tokens,
            min_new_tokens=args.max_tokens,  # same work as `axchat ask --ignore-eos`
        )
    t_done = time.monotonic()
    prompt_len = int(inputs["input_ids"].shape[1])
    new_ids = [int(t) for t in out[0, prompt_len:]]

    # With a random model whose vocabulary outgrows its tokenizer (the smollm2-135m and
    # llama-3.2-1b test shapes), many ids decode to nothing: the first text can come
    # many tokens in. Say how many, so first-token times can be read right.
    first_text_index = next(
        (i for i in range(len(new_ids)) if tokenizer.decode(new_ids[: i + 1], skip_special_tokens=True)), None
    )
    t0 = float(os.environ.get("ONESHOT_T0", _T_MAIN))
    phases = {
        "python_start_s": _T_MAIN - t0,
        "import_s": t_imported - _T_MAIN,
        "load_s": t_loaded - t_imported,
        "generate_s": t_done - t_loaded,
        "first_text_s": (first_text[0] - t0) if first_text else None,
        "prompt_tokens": prompt_len,
        "new_tokens": len(new_ids),
        "new_token_ids": new_ids,
        "first_text_token_index": first_text_index,
        "tokenizer_size": len(tokenizer),
        "dtype": str(model.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": sys.modules["transformers"].__version__,
    }
    sys.stdout.flush()
    print(PHASES_TAG + json.dumps(phases), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
