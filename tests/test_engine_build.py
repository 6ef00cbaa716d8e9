"""The install's engine build: native without AMX kernels, self-tested, one portable
rebuild when the native build crashes, and a clear stop (nothing installed) when both
fail. The decision logic runs with real crashing and passing child processes and a
recorded build step (a test must not compile llama.cpp twice); the flags themselves
are checked against the compiler and the installed engine."""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from axchat import engine_build
from axchat.doctor import machine, selftest

HERE = Path(__file__).resolve().parent / "doctor"
CRASHING = (sys.executable, str(HERE / "crashing_child.py"))
PASSING = (sys.executable, str(HERE / "passing_child.py"))
x86 = pytest.mark.skipif(not engine_build.is_x86(platform.machine()), reason="AMX exists on x86 only")


class Recorder:
    def __init__(self, tests: list[tuple[str, ...]], tmp: Path) -> None:
        self.tests = list(tests)
        self.built: list[list[str]] = []
        self.installed: list[Path] = []
        self.said: list[str] = []
        self.tmp = tmp

    def build(self, version: str, args: list[str], where: Path) -> Path:
        self.built.append(args)
        return self.tmp / f"{len(self.built)}.whl"

    def test(self) -> list[selftest.TypeResult]:
        return selftest.run_all(("f32", "q8_0"), child=self.tests.pop(0))


def test_a_native_build_that_crashes_is_rebuilt_once_portably_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "BUILD_RECORD", tmp_path / "record.json")
    r = Recorder([CRASHING, PASSING], tmp_path)
    ok = engine_build.ensure_engine("0.0", build=r.build, install=r.installed.append, test=r.test, say=r.said.append, uninstall=lambda: None)
    assert ok and r.installed == [tmp_path / "1.whl", tmp_path / "2.whl"]
    assert r.built[0][0] == "-DGGML_NATIVE=ON" and r.built[1][0] == "-DGGML_NATIVE=OFF"
    rebuild = [line for line in r.said if "rebuilding it for a portable instruction set" in line]
    assert len(rebuild) == 1 and "crashed: segmentation fault (SIGSEGV)" in rebuild[0] and "\n" not in rebuild[0]
    assert json.loads((tmp_path / "record.json").read_text())["variant"] == "portable"


def test_when_both_builds_crash_nothing_is_installed_and_the_install_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "BUILD_RECORD", tmp_path / "record.json")
    r = Recorder([CRASHING, CRASHING], tmp_path)
    removed: list[bool] = []
    ok = engine_build.ensure_engine("0.0", build=r.build, install=r.installed.append, test=r.test, say=r.said.append, uninstall=lambda: removed.append(True))
    assert not ok and removed == [True] and len(r.built) == 2
    assert "does not run correctly on this CPU" in r.said[-1] and "torch" not in r.said[-1]
    assert not (tmp_path / "record.json").exists()


def test_a_build_that_does_not_compile_is_tried_portably_then_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "BUILD_RECORD", tmp_path / "record.json")
    said: list[str] = []

    def no_compiler(version: str, args: list[str], where: Path) -> Path:
        raise engine_build.BuildFailed("cc: not found")

    ok = engine_build.ensure_engine("0.0", build=no_compiler, install=lambda w: None, test=lambda: [], say=said.append, uninstall=lambda: None)
    assert not ok and sum("failed: cc: not found" in line for line in said) == 2


@x86
def test_the_native_build_turns_amx_off_for_c_and_cxx_and_gcc_honours_it_over_march() -> None:
    args = engine_build.cmake_args("native", {"avx2", "amx_int8", "amx_tile"}, "x86_64")
    flags = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args}
    assert flags["-DGGML_NATIVE"] == "ON"
    for lang in ("-DCMAKE_C_FLAGS", "-DCMAKE_CXX_FLAGS"):
        assert set(engine_build.AMX_OFF) <= set(flags[lang].split())
    # The compiler the build uses: -march of an AMX CPU (what -march=native is there),
    # with the build's flags before or after it, defines no AMX macro.
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, "no C compiler: the engine build needs one"
    for order in ([*engine_build.AMX_OFF, "-march=sapphirerapids"], ["-march=sapphirerapids", *engine_build.AMX_OFF]):
        out = subprocess.run([cc, *order, "-dM", "-E", "-"], input="", capture_output=True, text=True, check=True).stdout
        assert "__AMX_INT8__" not in out and "__AMX_TILE__" not in out, shlex.join(order)
    plain = subprocess.run([cc, "-march=sapphirerapids", "-dM", "-E", "-"], input="", capture_output=True, text=True, check=True).stdout
    assert "__AMX_INT8__" in plain  # the check above would catch a compiler that enabled it


@x86
def test_the_portable_build_asks_only_for_what_the_cpu_has() -> None:
    args = engine_build.cmake_args("portable", {"sse4_2", "avx", "fma"}, "x86_64")
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX=ON" in args and "-DGGML_AVX2=OFF" in args and "-DGGML_F16C=OFF" in args


def test_the_installed_engine_has_no_amx_int8_kernels_and_was_self_tested() -> None:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AMX_INT8 = 1" not in info, info
    record = machine.build_record()
    assert record is not None, f"no {machine.BUILD_RECORD}: the engine was not installed by `make venv`"
    assert record["variant"] in engine_build.VARIANTS and "q4_k_m ok" in str(record["selftest"])
    if record["variant"] == "native" and engine_build.is_x86(platform.machine()):
        assert " ".join(engine_build.AMX_OFF) in " ".join(record["cmake_args"])
