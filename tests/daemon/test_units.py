"""The systemd units: what they say, that systemd accepts them, and `serve --check`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from axchat.daemon import units


def axchat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axchat", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_system_unit_is_a_hardened_notify_service() -> None:
    proc = axchat("service", "print")
    assert proc.returncode == 0, proc.stderr
    d = directives(proc.stdout)
    command = units.axchat_command()
    assert d["ExecStart"] == [f"{command} serve"] and d["ExecStartPre"] == [f"{command} serve --check"]
    assert d["Type"] == ["notify"] and d["Restart"] == ["on-failure"] and "WatchdogSec" in d
    assert d["User"] == ["axchat"] and d["Group"] == ["axchat"]
    assert d["RuntimeDirectory"] == ["axchat"] and d["RuntimeDirectoryMode"] == ["0750"]
    assert "AXCHAT_SOCKET=/run/axchat/axchat.sock" in d["Environment"]
    assert "AXCHAT_SOCKET_GROUP=axchat" in d["Environment"]
    assert "StartLimitBurst" in d and "StartLimitIntervalSec" in d
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("DevicePolicy", "closed")]:  # fmt: skip
        assert d[key] == [value], key
    assert "#DeviceAllow=/dev/metis-0 rw" in proc.stdout and "#DeviceAllow=/dev/nvidiactl rw" in proc.stdout


def test_system_unit_confines_system_calls_capabilities_processes_and_resources() -> None:
    d = directives(units.render(False))
    for key, value in [("SystemCallFilter", "@system-service"), ("SystemCallArchitectures", "native"),
                       ("CapabilityBoundingSet", ""), ("ProtectProc", "invisible")]:  # fmt: skip
        assert d[key] == [value], key
    assert len(d["MemoryMax"]) == 1 and d["MemoryMax"][0] and len(d["TasksMax"]) == 1 and d["TasksMax"][0].isdigit()


def test_user_unit_uses_the_per_user_socket() -> None:
    proc = axchat("service", "print", "--user")
    assert proc.returncode == 0, proc.stderr
    d = directives(proc.stdout)
    assert d["Type"] == ["notify"] and d["WantedBy"] == ["default.target"]
    assert "User" not in d and "AXCHAT_SOCKET" not in proc.stdout


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`; `make test` installs it as root)")
    return tool


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, user: bool) -> None:
    tool = systemd_analyze()
    unit = tmp_path / "axchat.service"
    unit.write_text(units.render(user))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    # --user needs a runtime directory to look things up in, even for a syntax check.
    cmd = [tool, "verify", *(["--user"] if user else []), str(unit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    # verify exits 0 even on unknown keys, which it only warns about: no output is the pass.
    assert proc.returncode == 0 and proc.stderr.strip() == "" and proc.stdout.strip() == "", proc.stdout + proc.stderr


# systemd-analyze rates a unit's exposure from 0 (locked down) to 10; README's service
# section quotes the figure for the system unit.
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)")
MAX_EXPOSURE = 2.0


def test_systemd_analyze_security_rates_the_system_unit_ok(tmp_path: Path) -> None:
    tool = systemd_analyze()
    unit = tmp_path / "axchat.service"
    unit.write_text(units.render(False))
    proc = subprocess.run([tool, "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60)
    found = EXPOSURE.search(proc.stdout + proc.stderr)
    assert found is not None, proc.stdout + proc.stderr
    score, level = float(found.group(1)), found.group(2)
    assert score <= MAX_EXPOSURE and level == "OK", found.group(0)


def test_install_writes_the_units(tmp_path: Path) -> None:
    proc = axchat("service", "install", "--user", env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "cfg" / "systemd" / "user" / "axchat.service"
    assert written.read_text() == units.render(True)
    assert "systemctl --user daemon-reload" in proc.stderr
    system_dir = tmp_path / "system"
    proc = axchat("service", "install", "--unit-dir", str(system_dir), "--no-account")
    assert proc.returncode == 0, proc.stderr
    assert (system_dir / "axchat.service").read_text() == units.render(False)


def test_serve_check_passes_quickly_on_a_good_setup(tiny_model_dir: Path) -> None:
    sock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"axc-check-{os.getpid()}"
    proc = axchat("serve", "--check", "--model", str(tiny_model_dir), "--socket", str(sock_dir / "d.sock"))
    assert proc.returncode == 0, proc.stderr
    assert "ok: model" in proc.stderr and "(llama)" in proc.stderr and "device cpu" in proc.stderr
    assert "loading" not in proc.stderr  # nothing was loaded
    shutil.rmtree(sock_dir, ignore_errors=True)


def test_serve_check_fails_on_a_missing_model(tmp_path: Path) -> None:
    proc = axchat("serve", "--check", "--model", str(tmp_path / "gone"), "--socket", str(tmp_path / "d.sock"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"axchat serve: error: model path {tmp_path / 'gone'} does not exist"


def test_serve_check_fails_on_a_device_torch_cannot_see(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = axchat("serve", "--check", "--model", str(tiny_model_dir), "--device", "cuda", "--socket", str(tmp_path / "d.sock"))
    if proc.returncode == 0:
        pytest.skip("this machine has a CUDA device")
    assert proc.returncode == 1 and "no CUDA device" in proc.stderr


def test_the_units_ship_in_the_wheel(tmp_path: Path) -> None:
    """`axchat service print` from a wheel install, not a checkout: the templates are
    package data, found through importlib.resources."""
    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    # Built from a copy, so the build leaves nothing in the checkout.
    shutil.copytree(root / "axchat", src / "axchat", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("axchat-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    for user in (False, True):
        assert (site / "axchat" / "daemon" / "systemd" / units.template(user).name).is_file()
    # The installed copy alone on the path, run from elsewhere.
    proc = subprocess.run(
        [sys.executable, "-c", "from axchat.daemon import units; print(units.__file__); print(units.render(True, 'AXCHAT'))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert proc.returncode == 0, proc.stderr
    where, text = proc.stdout.split("\n", 1)
    assert where.startswith(str(site))
    assert "ExecStart=AXCHAT serve" in text and text.rstrip("\n") == units.render(True, "AXCHAT").rstrip("\n")
