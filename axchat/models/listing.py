"""`axchat models`: the models on this machine (bundled, pulled, and Ollama's, served in
place) and the catalogs (hub models `axchat pull` knows by name, Metis precompiled models),
marking what is here.

Reads config.json files only: no torch, transformers or Voyager SDK import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from axchat.models import catalog, gguf_header, ollama_store, store
from axchat.models.aipu_catalog import CATALOG as AIPU_CATALOG
from axchat.models.model_files import ModelFileError


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    return [
        "  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (header, *rows)
    ]


def _ollama_rows(found: Sequence[ollama_store.OllamaModel | tuple[str, str]]) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Rows for Ollama's models, with quantization from each GGUF header, and the
    (name, why) of each that cannot be served."""
    rows, problems = [], []
    for m in found:
        if isinstance(m, tuple):
            rows.append([m[0], "?", "?", "?", "Ollama's; cannot be served (below)"])
            problems.append(m)
            continue
        try:
            facts = gguf_header.read_facts(m.blob)
        except ModelFileError as exc:
            rows.append([m.name, _size(m.size_bytes), "?", "?", "Ollama's; cannot be read (below)"])
            problems.append((m.name, str(exc)))
            continue
        arch = str(facts.get("general.architecture") or "unknown")
        context = facts.get(f"{arch}.context_length")
        quant = gguf_header.quantization(facts)
        rows.append([m.name, _size(m.size_bytes), str(context or "?"), f"{arch} (GGUF)", f"Ollama's, {quant}"])
    return rows, problems


def render(local: Sequence[store.LocalModel], ollama_rows: Sequence[Sequence[str]] = ()) -> str:
    root = store.store_root()
    bundled = store.describe(catalog.BUNDLED_DIR, catalog.BUNDLED_NAME)
    lines = [f"Local models ({root}):"]
    rows = [
        [m.name, _size(m.size_bytes), str(m.context or "?"), m.architecture, note]
        for m, note in [
            (bundled, "bundled demo (jokes and quotes)"),
            *((m, "cannot be read (below)" if m.unreadable else "") for m in local),
        ]
    ]
    rows += [list(r) for r in ollama_rows]  # served in place from Ollama's store, no copy
    lines += _table(["NAME", "SIZE", "CONTEXT", "ARCHITECTURE", ""], rows)

    present = {m.name for m in local}
    lines += ["", "Catalog (axchat pull NAME, then axchat serve --model NAME):"]
    rows = []
    for m in catalog.CATALOG.values():
        status = "pulled" if m.name in present else ""
        if m.gated:
            status = ", ".join(filter(None, [status, "gated: needs HF_TOKEN"]))
        rows.append([m.name, m.hub_id, f"~{m.approx_gb:g} GB", m.licence, status])
    lines += _table(["NAME", "HUB ID", "DOWNLOAD", "LICENCE", ""], rows)

    lines += ["", "Metis (AIPU) precompiled models (axchat serve --backend aipu --model NAME):"]
    rows = [[m.name, str(m.context), str(m.cores), f"{m.ddr_gb:g} GB", m.hf_id] for m in AIPU_CATALOG.values()]
    lines += _table(["NAME", "CONTEXT", "CORES", "CARD", "TOKENIZER"], rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The listing on stdout; a line on stderr for each model whose files cannot be read,
    and then exit status 1, so a script notices."""
    argparse.ArgumentParser(prog="axchat models", description=__doc__.split("\n\n")[0]).parse_args(argv)
    local = store.local_models()
    ollama_rows, ollama_problems = _ollama_rows(ollama_store.local_models())
    print(render(local, ollama_rows))
    unreadable = [(m.name, m.unreadable) for m in local if m.unreadable] + ollama_problems
    for name, why in unreadable:
        print(f"axchat models: {name}: {why}", file=sys.stderr)
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
