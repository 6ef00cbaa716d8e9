"""Copy a random-weight test model so that greedy decoding only picks ids the tokenizer knows.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/visible_model.py SRC_DIR DST_DIR

Why: test shapes larger than `tiny` (smollm2-135m, llama-3.2-1b) have the real model's
vocabulary (49152 ids) but the 1000-token test tokenizer. Random weights then mostly pick
ids the tokenizer cannot decode; the daemon sends a delta only when text appears, so a
whole answer arrives as one delta at the end and client-side first-token times and
inter-token gaps mean nothing.

What: the rows of the output projection (and of the input embedding, which SmolLM2 ties to
it) for ids >= the tokenizer's size are set to zero. Their logits become exactly 0 while
the known ids' random logits straddle 0, so greedy picks a known id. Every tensor keeps
its shape and dtype: the forward pass does the same arithmetic, at the same cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/visible_model.py", description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    args = p.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    if not (src / "model.safetensors").is_file():
        print(f"visible_model: error: {src}/model.safetensors not found (one-file safetensors models only)", file=sys.stderr)
        return 1

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    known = len(AutoTokenizer.from_pretrained(str(src)))
    tensors = load_file(str(src / "model.safetensors"))
    zeroed = []
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        t = tensors.get(name)
        if t is not None and t.shape[0] > known:
            t = t.clone()
            t[known:] = torch.zeros_like(t[known:])
            tensors[name] = t
            zeroed.append(name)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, dst / f.name)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    marker = dst / "axchat_tiny_model.json"
    info = json.loads(marker.read_text()) if marker.is_file() else {}
    info["visible_vocab"] = known
    marker.write_text(json.dumps(info))
    print(f"visible_model: wrote {dst} (ids >= {known} zeroed in {', '.join(zeroed) or 'nothing'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
