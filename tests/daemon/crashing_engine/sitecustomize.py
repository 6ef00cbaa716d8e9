"""Run by every Python process started with this directory on PYTHONPATH: when
$AXCHAT_TEST_ENGINE_CRASH is set, the llama.cpp engine's forward passes fault in native
code (a read of address 0), as a miscompiled kernel does. The rest of axchat is the real
code. A test steers a real daemon (or a self-test child) into the crash with it."""

import os

if os.environ.get("AXCHAT_TEST_ENGINE_CRASH"):
    import ctypes
    import importlib.abc
    import importlib.machinery
    import sys

    TARGET = "axchat.actors.backends.llamacpp.engine"

    class _CrashingEngine(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
            if name != TARGET:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            load = spec.loader.exec_module

            def exec_module(module):  # type: ignore[no-untyped-def]
                load(module)
                module.Engine.run = lambda self, *args: ctypes.string_at(0)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _CrashingEngine())
