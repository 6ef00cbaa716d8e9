"""Install-time (`make venv` runs `python -m axchat.engine_build`): llama-cpp-python
built for the CPU it runs on, self-tested, then installed into this environment.

Native first: llama.cpp compiled for this machine's instruction set, without its AMX
kernels, which crash on the first quantized batch of more than one token on CPUs that
have AMX (ggml-org/llama.cpp#20824; GCC keeps an explicit `-mno-amx-*` over
`-march=native`). If the engine self-test crashes or computes nonsense, it is built
once more for a portable instruction set; if that fails too, nothing is installed and
the install stops, saying why. It never falls back to torch.

Built wheels are kept under `$XDG_CACHE_HOME/axchat/engine/`, keyed by version, CMake
arguments, compiler and CPU flags, never in pip's own cache, where a wheel built with
other flags would be reused without a word.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from axchat.doctor import machine, selftest

PACKAGE = "llama-cpp-python"
AMX_OFF = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
# The portable build's instruction-set options, each on only where this CPU has it.
PORTABLE_ISA = {"GGML_SSE42": "sse4_2", "GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_BMI2": "bmi2"}
VARIANTS = ("native", "portable")


def is_x86(arch: str) -> bool:
    return arch in ("x86_64", "AMD64", "i686")


def cmake_args(variant: str, flags: set[str], arch: str) -> list[str]:
    if variant == "native":
        args = ["-DGGML_NATIVE=ON"]
        if is_x86(arch):
            off = " ".join(AMX_OFF)
            args += [f"-DCMAKE_C_FLAGS={off}", f"-DCMAKE_CXX_FLAGS={off}"]
        return args
    args = ["-DGGML_NATIVE=OFF"]
    if is_x86(arch):
        args += [f"-D{option}={'ON' if flag in flags else 'OFF'}" for option, flag in PORTABLE_ISA.items()]
    return args


def _compiler() -> str:
    try:
        out = subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def cache_dir(version: str, variant: str, args: list[str], flags: set[str], arch: str) -> Path:
    """Where this build's wheel is kept. A native build depends on the CPU's flags; a
    portable one only on what it was asked for."""
    key = {"version": version, "args": args, "arch": arch, "compiler": _compiler()}
    if variant == "native":
        key["flags"] = sorted(flags)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "axchat" / "engine"
    return root / f"{PACKAGE}-{version}-{variant}-{digest}"


def _pip(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def build_wheel(version: str, args: list[str], where: Path) -> Path:
    """The wheel in `where`, compiled now if it is not there yet (its log beside it)."""
    found = sorted(where.glob("*.whl"))
    if found:
        return found[0]
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))
    log = where.parent / f"{where.name}.log"
    with open(log, "w") as out:
        done = _pip(
            "wheel", "--no-deps", "--no-cache-dir", "--no-binary", PACKAGE, "-w", str(tmp), f"{PACKAGE}=={version}",
            env={**os.environ, "CMAKE_ARGS": shlex.join(args)}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildFailed(f"pip could not build {PACKAGE} {version} ({shlex.join(args)}); the end of {log}:\n{tail}")
    os.replace(tmp, where)
    return sorted(where.glob("*.whl"))[0]


class BuildFailed(Exception):
    """The engine could not be compiled; the message says why."""


def install_wheel(wheel: Path) -> None:
    """Replace whatever llama-cpp-python is installed (same version, other flags) with `wheel`."""
    for step in (["--no-deps", "--force-reinstall", str(wheel)], [str(wheel)]):  # the wheel, then its dependencies
        done = _pip("install", "-q", "--no-cache-dir", *step, capture_output=True)
        if done.returncode != 0:
            raise BuildFailed(f"pip could not install {wheel.name}: {done.stderr.strip()[-800:]}")


def uninstall() -> None:
    _pip("uninstall", "-y", "-q", PACKAGE, capture_output=True)


def ensure_engine(
    version: str,
    *,
    build: Callable[[str, list[str], Path], Path] = build_wheel,
    install: Callable[[Path], None] = install_wheel,
    test: Callable[[], list[selftest.TypeResult]] = selftest.run_all,
    say: Callable[[str], None] = print,
    uninstall: Callable[[], None] = uninstall,
) -> bool:
    """Native build, else one portable build; True when one passes the self-test."""
    model, flags = machine.cpuinfo()
    arch = platform.machine()
    failures: list[str] = []
    for variant in VARIANTS:
        args = cmake_args(variant, flags, arch)
        where = cache_dir(version, variant, args, flags, arch)
        if not any(where.glob("*.whl")):
            say(
                f"building {PACKAGE} {version} ({variant}: {shlex.join(args)}): a one-time compile of llama.cpp, "
                f"about 5-10 minutes on 2 cores; the wheel is kept in {where.parent}"
            )
        try:
            wheel = build(version, args, where)
            install(wheel)
        except BuildFailed as exc:
            failures.append(f"the {variant} build: {exc}")
            say(f"the {variant} build of llama.cpp failed: {str(exc).splitlines()[0]}")
            continue
        results = test()
        line = selftest.summary(results)
        if all(r.passed for r in results):
            say(f"engine self-test ({variant} build): {line}")
            _write_record(variant, args, wheel, results)
            return True
        failures.append(f"the {variant} build: {line}")
        if variant != VARIANTS[-1]:
            say(f"the {variant} build of llama.cpp failed its self-test ({line}): rebuilding it for a portable instruction set")
    uninstall()
    say(
        f"llama.cpp does not run correctly on this CPU ({model}), neither built for it nor portably; "
        f"{PACKAGE} is not installed. What failed: " + " | ".join(f.splitlines()[0] for f in failures)
    )
    return False


def _write_record(variant: str, args: list[str], wheel: Path, results: list[selftest.TypeResult]) -> None:
    machine.BUILD_RECORD.parent.mkdir(parents=True, exist_ok=True)
    record = {"variant": variant, "cmake_args": args, "wheel": str(wheel), "selftest": selftest.summary(results)}
    machine.BUILD_RECORD.write_text(json.dumps(record, indent=2) + "\n")


def pinned_version() -> str:
    """The version axchat's `llamacpp` extra pins (pyproject.toml is its one owner)."""
    from importlib import metadata

    for requirement in metadata.requires("axchat") or []:
        name, _, rest = requirement.partition("==")
        if name.strip() == PACKAGE and rest:
            return rest.split(";")[0].strip()
    raise SystemExit(f"axchat's metadata pins no {PACKAGE} version (pyproject.toml, extra `llamacpp`)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m axchat.engine_build", description=__doc__.splitlines()[0])
    p.add_argument("--version", help=f"the {PACKAGE} version to build (default: the one pyproject.toml pins)")
    args = p.parse_args(argv)
    return 0 if ensure_engine(args.version or pinned_version()) else 1


if __name__ == "__main__":
    sys.exit(main())
