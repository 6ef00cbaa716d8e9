"""One weight type of the engine self-test, run in a child process so that a kernel
that crashes takes only the child down: `python -m axchat.doctor.selftest_child TYPE`,
the f32 reference (if any) as JSON on stdin, one JSON result on stdout.

The model is the bundled axchat-mini, converted (and quantized) through the real
loading code. The child exercises the shapes that have crashed engines before: a
multi-token prompt, a batch of 8 sequences with several tokens each, then one-token
decode steps."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from axchat.host_cores import default_threads
from axchat.models.catalog import BUNDLED_DIR

PROMPT = "<|im_start|>user\nTell me a joke about computers, please<|im_end|>\n<|im_start|>assistant\n"
DECODE_STEPS = 24
BATCH_ROWS = 8
CELLS = 4096


def run(kind: str, reference: dict[str, list[int]] | None) -> dict[str, object]:
    import llama_cpp
    from tokenizers import Tokenizer

    from axchat.actors.backends.llamacpp import engine as engine_mod
    from axchat.actors.backends.llamacpp.load import gguf_for

    threads = default_threads()
    gguf = gguf_for(BUNDLED_DIR, kind, threads)
    engine = engine_mod.Engine(gguf, cells=CELLS, sequences=BATCH_ROWS + 2, batch=512, threads=threads, exact=kind == "f32")
    try:
        prompt = Tokenizer.from_file(str(BUNDLED_DIR / "tokenizer.json")).encode(PROMPT, add_special_tokens=False).ids
        finite = True

        # A multi-token prompt, then greedy one-token steps (timed).
        logits = engine.run(prompt, range(len(prompt)), [0] * len(prompt), [len(prompt) - 1])
        finite &= bool(np.isfinite(logits).all())
        greedy = [*prompt, int(logits[0].argmax())]
        started = time.perf_counter()
        for _ in range(DECODE_STEPS):
            pos = len(greedy) - 1
            logits = engine.run([greedy[-1]], [pos], [0], [0])
            finite &= bool(np.isfinite(logits).all())
            greedy.append(int(logits[0].argmax()))
        decode_tok_s = DECODE_STEPS / (time.perf_counter() - started)

        # Eight sequences in one batch, each several tokens long, then one step of 8 rows.
        rows = [prompt[: len(prompt) - i] for i in range(BATCH_ROWS)]
        tokens = [t for row in rows for t in row]
        positions = [p for row in rows for p in range(len(row))]
        seqs = [1 + s for s, row in enumerate(rows) for _ in row]
        ends = list(np.cumsum([len(row) for row in rows]) - 1)
        logits = engine.run(tokens, positions, seqs, ends)
        finite &= bool(np.isfinite(logits).all())
        step = engine.run(
            [int(x.argmax()) for x in logits], [len(row) for row in rows], [1 + s for s in range(BATCH_ROWS)], range(BATCH_ROWS)
        )
        finite &= bool(np.isfinite(step).all())

        # Teacher-forced: this type's next-token choice at every position of the f32 text.
        text = reference["sequence"] if reference else greedy
        seq = BATCH_ROWS + 1
        forced = engine.run(text, range(len(text)), [seq] * len(text), range(len(text)))
        finite &= bool(np.isfinite(forced).all())
        argmax = [int(i) for i in forced.argmax(axis=1)]
        agreement = float(np.mean(np.array(argmax) == np.array(reference["argmax"]))) if reference else 1.0
        return {
            "type": kind,
            "finite": finite,
            "sequence": greedy,
            "argmax": argmax,
            "agreement": agreement,
            "decode_tok_s": decode_tok_s,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        }
    finally:
        engine.close()


def main() -> int:
    kind = sys.argv[1]
    raw = sys.stdin.read().strip()
    result = run(kind, json.loads(raw) if raw else None)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
