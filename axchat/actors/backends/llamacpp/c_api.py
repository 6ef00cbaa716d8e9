"""llama-cpp-python's C API without the rest of its package.

`import llama_cpp` runs the package's `__init__`, which imports the C API (all axchat
calls) and then the high-level `Llama` class with its chat formats and disk cache:
jinja2, diskcache, sqlite3 and multiprocessing, about 3 MiB of a daemon's memory for
code it never runs. `load` makes the package module from its spec without running that
`__init__`, gives it the C API's names (what its `from .llama_cpp import *` would), and
lets the first request for any other name run the `__init__` after all, so
`from llama_cpp import Llama` anywhere in the process still works.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

_lock = threading.Lock()


def load() -> ModuleType:
    """The `llama_cpp` package with its C API imported; the whole package when it was
    imported before, or when its C API will not import alone (then as its own import
    fails: a broken install says why)."""
    with _lock:
        found = sys.modules.get("llama_cpp")
        if found is not None:
            return found
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return importlib.import_module("llama_cpp")
        package = importlib.util.module_from_spec(spec)
        sys.modules["llama_cpp"] = package
        try:
            c_api = importlib.import_module("llama_cpp.llama_cpp")
        except Exception:
            sys.modules.pop("llama_cpp", None)
            sys.modules.pop("llama_cpp.llama_cpp", None)
            return importlib.import_module("llama_cpp")
        names = getattr(c_api, "__all__", None) or [n for n in vars(c_api) if not n.startswith("_")]
        package.__dict__.update({name: getattr(c_api, name) for name in names})
        package.__dict__["__getattr__"] = _rest_of(package, spec.loader)
        return package


def _rest_of(package: ModuleType, loader: Any) -> Any:
    def __getattr__(name: str) -> Any:
        with _lock:
            if package.__dict__.pop("__getattr__", None) is not None:
                loader.exec_module(package)  # the package's own __init__, at last
        return getattr(package, name)

    return __getattr__
