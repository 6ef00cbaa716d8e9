"""README's quick start, run as written: the block is read from README.md, so README and
code cannot drift apart. `make run` starts the bundled axchat-mini on the default socket
in a checkout-shaped directory whose `.venv` runs this interpreter (building a real venv
is `make`'s business, not this test's); every later line must find that one daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import short_socket_dir
from pyjokes import jokes_en

REPO = Path(__file__).resolve().parent.parent
FORTUNES = Path("/usr/share/games/fortunes/literature")
QUICK_START = re.compile(r"<!-- quick-start[^>]*-->\s*```sh\n(.*?)```", re.S)
MARK = "@@quick-start line "


def quick_start_lines() -> list[str]:
    found = QUICK_START.search((REPO / "README.md").read_text())
    assert found, "README.md has no quick-start block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def sentences(texts: list[str]) -> set[str]:
    """Sentences long enough that finding one in an answer cannot be chance."""
    return {s for t in texts for s in re.split(r"(?<=[.?!])\s+", " ".join(t.split())) if len(s) >= 15}


def is_joke(text: str) -> bool:
    return any(s in text for s in sentences(jokes_en.neutral))


def is_quote(text: str) -> bool:
    return any(s in text for s in sentences(FORTUNES.read_text().split("\n%\n")))


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """A directory laid out as a checkout after `make venv`: the Makefile, and a .venv
    whose python and axchat are this interpreter with this source tree first."""
    root = tmp_path / "checkout"
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "axchat"):
        (root / name).symlink_to(REPO / name)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "axchat").write_text(f'#!/bin/sh\nexec {sys.executable} -m axchat "$@"\n')
    for exe in ("python", "axchat"):
        (bin_dir / exe).chmod(0o755)
    (bin_dir / "activate").write_text(f'VIRTUAL_ENV={root / ".venv"}\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n')
    # Newer than pyproject.toml and the engine build's sources: `make` installs nothing.
    for stamp in (".installed", ".llamacpp-installed"):
        (bin_dir / stamp).touch()
    yield root
    # Whatever the script got to, no daemon outlives the test.
    subprocess.run([bin_dir / "axchat", "stop"], env=quick_start_env(root), capture_output=True, timeout=60)


_RUNTIME: dict[Path, Path] = {}


def quick_start_env(root: Path) -> dict[str, str]:
    """A new user's shell: nothing axchat-specific set, so the default socket (under a
    private XDG_RUNTIME_DIR) is the one both `make run` and the clients use."""
    runtime = _RUNTIME.setdefault(root, short_socket_dir())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXCHAT_") and k != "VIRTUAL_ENV"}
    config = root / "empty-config.toml"  # no /etc or user config may name a model behind the test's back
    config.touch()
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not Path(p, "axchat").exists()]
    return {
        **env,
        "PATH": os.pathsep.join(path),  # `axchat` is not on PATH until the activate line
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_STATE_HOME": str(root / "state"),
        "XDG_DATA_HOME": str(root / "data"),
        "AXCHAT_CONFIG": str(config),
        "HF_HUB_OFFLINE": "1",
    }


def run_block(root: Path, lines: list[str]) -> dict[str, tuple[str, str]]:
    """Each line in one bash session, stopping at the first that fails; stdout and
    stderr per line."""
    script = "set -e\n" + "".join(f"echo '{MARK}{i}'; echo '{MARK}{i}' >&2\n{line}\n" for i, line in enumerate(lines))
    proc = subprocess.run(
        ["bash", "-c", script], cwd=root, env=quick_start_env(root), capture_output=True, text=True, timeout=600
    )

    def split(text: str) -> list[str]:
        return re.split(rf"{MARK}\d+\n", text)[1:]

    outs, errs = split(proc.stdout), split(proc.stderr)
    assert proc.returncode == 0, f"line {len(outs) - 1} ({lines[len(outs) - 1]!r}) failed:\n{proc.stdout}\n{proc.stderr}"
    return {line: (out, err) for line, out, err in zip(lines, outs, errs, strict=True)}


@pytest.mark.skipif(not FORTUNES.is_file(), reason="Debian's fortunes-min (the quote corpus) is not installed")
def test_the_readme_quick_start_works_as_written(checkout: Path) -> None:
    lines = quick_start_lines()
    assert lines[0] == "make run" and lines[-1] == "make stop"
    results = run_block(checkout, lines)

    out, err = results["make run"]
    assert "daemon ready" in err and is_joke(out), (out, err)  # make run's own prompt: "Give me a joke"
    assert "source .venv/bin/activate" in out  # it says how to put axchat on PATH
    assert "Writing" not in err and "Traceback" not in err  # only its own progress
    for line, (out, err) in results.items():
        assert "starting one" not in err, f"{line!r} started a second daemon:\n{err}"
        if line.startswith('axchat ask "Tell me a quote"'):
            assert is_quote(out), out
        elif "--show-stats" in line:
            assert is_joke(out) and re.search(r"^Tokenization: \d+\.\dms \| Prefill", err, re.M), (out, err)
        elif "| axchat chat" in line:
            # A two-turn transcript: a joke, then the model recalls what was asked.
            turns = re.findall(r"^Assistant: (.*)$", out, re.M)
            assert len(turns) == 2 and is_joke(turns[0]), out
            assert "asked" in turns[1] and "joke" in turns[1], out
        elif line == "axchat status":
            assert "axchat-mini" in out, out
    assert "stopped the daemon" in results["make stop"][1]
    assert not (checkout / "state" / "axchat" / "daemon.log").exists()  # nothing was autostarted
