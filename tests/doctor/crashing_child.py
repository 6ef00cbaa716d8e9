"""A self-test child that dies the way a broken kernel kills one: by SIGSEGV, from a real
fault in native code (a read of address 0). `python crashing_child.py TYPE`."""

import ctypes

ctypes.string_at(0)
