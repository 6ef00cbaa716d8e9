"""The torch engine: Hugging Face transformers models on the CPU or CUDA, through a lean
Llama decode path (`lean_llama`, `lean_backend`, tuned at load by `decode_tuning`, its
matmuls split by `matmul_lanes`) or the generic one (`generic_backend`).

Named `torch_engine`, not `torch`, so that no reader (or tool that puts a package
directory on sys.path) mistakes it for the library. Importing this package imports
nothing heavy; `entry` is what the backend registry calls."""

from __future__ import annotations

import importlib.util

# torch and transformers are the `torch` extra: the default engine (llama.cpp) needs neither.
EXTRA_INSTALL = "pip install 'axchat[torch]'"


def missing_extra(what: str) -> str | None:
    """One line saying `what` needs the torch extra, or None when it is installed."""
    absent = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return f"{what} needs {' and '.join(absent)}, which axchat installs only as an extra: {EXTRA_INSTALL}"
