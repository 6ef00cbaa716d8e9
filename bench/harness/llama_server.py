"""llama.cpp's own `llama-server`, built once from the very llama.cpp source the installed
engine was compiled from (llama-cpp-python's sdist vendors it), with the same CPU flags
(`axchat.engine_build.cmake_args`, AMX off), so that a comparison measures the servers
and not two builds of llama.cpp.

The binary is kept under `$XDG_CACHE_HOME/axchat/llama-server/`, keyed like the engine's
wheels (version, CMake arguments, compiler, CPU flags); its build log lies beside it.
`bench/peers.py --build-only` builds it ahead of a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from axchat import engine_build
from axchat.doctor import machine
from harness.output import BenchError

TARGET = "llama-server"
# Two jobs: the machines this runs on have two cores, and a wider build only thrashes.
BUILD_JOBS = "2"


def installed_version() -> str:
    """The llama-cpp-python the daemon runs (what was built is what is compared)."""
    from importlib import metadata

    try:
        return metadata.version(engine_build.PACKAGE)
    except metadata.PackageNotFoundError:
        return engine_build.pinned_version()


def build_args() -> list[str]:
    _, flags = machine.cpuinfo()
    return [
        *engine_build.cmake_args("native", flags, platform.machine()),
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_CURL=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
    ]


def cache_dir(version: str, args: list[str]) -> Path:
    _, flags = machine.cpuinfo()
    key = {
        "version": version,
        "args": args,
        "arch": platform.machine(),
        "compiler": engine_build._compiler(),
        "flags": sorted(flags),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "axchat" / "llama-server"
    return root / f"{version}-{digest}"


def _run(cmd: list[str], cwd: Path, out: object) -> None:
    done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} failed (status {done.returncode})")


def ensure(log: Callable[[str], None]) -> Path:
    """The cached llama-server binary, compiled now (niced, minutes) when absent."""
    version = installed_version()
    args = build_args()
    where = cache_dir(version, args)
    binary = where / TARGET
    if binary.is_file():
        return binary
    where.parent.mkdir(parents=True, exist_ok=True)
    build_log = where.parent / f"{where.name}.log"
    log(f"building {TARGET} from {engine_build.PACKAGE} {version}'s llama.cpp ({shlex.join(args)}); log: {build_log}")
    work = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))
    try:
        with open(build_log, "w") as out:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-cache-dir",
                  "-d", str(work), f"{engine_build.PACKAGE}=={version}"], work, out)  # fmt: skip
            sdist = next(work.glob("*.tar.gz"))
            with tarfile.open(sdist) as tar:
                tar.extractall(work, filter="data")
            src = next(p for p in work.iterdir() if p.is_dir()) / "vendor" / "llama.cpp"
            nice = ["nice", "-n", "10"] if shutil.which("nice") else []
            _run([*nice, "cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", *args], src, out)
            _run(
                [*nice, "cmake", "--build", "build", "--config", "Release", "--target", TARGET, "-j", BUILD_JOBS],
                src,
                out,
            )
            built = src / "build" / "bin" / TARGET
            staging = work / "out"
            staging.mkdir()
            shutil.copy2(built, staging / TARGET)  # static (no shared libraries to carry)
            os.replace(staging, where)
    except (BenchError, OSError, StopIteration, tarfile.TarError) as exc:
        tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-15:]) if build_log.exists() else ""
        raise BenchError(f"could not build {TARGET}: {exc}; the end of {build_log}:\n{tail}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary
