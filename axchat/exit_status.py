"""How a child process ended, in words: "crashed: segmentation fault (SIGSEGV)" rather
than "exited with code -11". Shared by everything that starts a daemon or an engine
check and must tell the user why it is gone. Standard library only (`ask` imports it)."""

from __future__ import annotations

import os
import shutil
import signal
import sys

# Signals that mean the process's own native code faulted: in an axchat daemon that is
# the engine (llama.cpp's kernels, torch's), never Python itself.
FAULTS = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGILL: "illegal instruction",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "arithmetic fault",
    signal.SIGABRT: "abort",
}


def signal_of(returncode: int | None) -> signal.Signals | None:
    """The signal that ended a process (subprocess's negative return code), if any."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode)
    except ValueError:
        return None


def describe(returncode: int, during: str = "") -> str:
    """One phrase for how a process ended; `during` says what it was doing ("while
    loading the model"), and is added for crashes only."""
    sig = signal_of(returncode)
    if sig is None:
        return f"exited with code {returncode}"
    where = f" {during}" if during else ""
    if sig in FAULTS:
        return f"crashed: {FAULTS[sig]} ({sig.name}) in the engine{where}"
    if sig == signal.SIGKILL:
        return f"was killed (SIGKILL){where}; the kernel does this when memory runs out"
    return f"was ended by {sig.name}{where}"


def crashed(returncode: int | None) -> bool:
    sig = signal_of(returncode)
    return sig is not None and sig in FAULTS


def doctor_hint() -> str:
    """Where to go next after a crash, spelled so that it runs from this shell."""
    beside = os.path.join(os.path.dirname(sys.executable), "axchat")
    command = "axchat" if shutil.which("axchat") == beside else beside
    return f"`{command} doctor` tests the engine on this machine and prints what to report"
