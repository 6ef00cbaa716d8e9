"""`axchat pull` against a loopback server laid out like the hub: what it fetches, a
download that breaks off and resumes, and the errors that must leave nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import HubState, Repo, hub_server

from axchat.models import pull as pull_mod
from axchat.models import resolve, store
from axchat.testing import tiny_model

REPO_ID = "testorg/tiny-chat"
# Files a model repository often carries that from_pretrained does not need here.
SKIPPED = {"pytorch_model.bin": os.urandom(4096), "README.md": b"# tiny\n", "onnx/model.onnx": b"\0" * 512}


@pytest.fixture(scope="module")
def model_files(tiny_model_dir: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file() and p.name != tiny_model.MARKER_FILE
    }


@pytest.fixture
def hub(model_files: dict[str, bytes]) -> Iterator[tuple[str, HubState]]:
    state = HubState(repos={REPO_ID: Repo({**model_files, **SKIPPED})})
    with hub_server(state) as url:
        yield url, state


@pytest.fixture
def data_home(tmp_path: Path) -> Path:
    return tmp_path / "data"


def axchat_pull(name: str, endpoint: str, data_home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return axchat_pull_args([name], endpoint, data_home, **env)


def axchat_pull_args(args: list[str], endpoint: str, data_home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}  # only the test's token, if any
    env.update(HF_ENDPOINT=endpoint, XDG_DATA_HOME=str(data_home), **extra)
    return subprocess.run([sys.executable, "-m", "axchat", "pull", *args], env=env, capture_output=True, text=True, timeout=60)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_pull_fetches_what_a_model_needs_into_the_store(
    hub: tuple[str, HubState], data_home: Path, model_files: dict[str, bytes]
) -> None:
    url, state = hub
    proc = axchat_pull(REPO_ID, url, data_home)
    assert proc.returncode == 0, proc.stderr
    target = data_home / "axchat" / "models" / "testorg--tiny-chat"
    assert {p.name: p.read_bytes() for p in target.iterdir()} == model_files
    assert {path for path, _, _ in state.downloads} == set(model_files)  # no .bin, README or onnx
    assert files_under(data_home / "axchat" / "models" / store.STAGING_DIR) == []
    assert f"--model {REPO_ID}" in proc.stderr
    # The hub id now resolves to the pulled copy.
    assert resolve.resolve(REPO_ID, target.parent).source == str(target)
    # A second pull finds it and fetches nothing.
    again = axchat_pull(REPO_ID, url, data_home)
    assert again.returncode == 0 and "already" in again.stderr
    assert len(state.downloads) == len(model_files)


def test_pull_gguf_fetches_the_catalog_models_gguf_file_which_lists_and_resolves(
    model_files: dict[str, bytes], data_home: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from axchat.actors.backends.llamacpp import gguf_convert
    from axchat.models import catalog

    entry = catalog.CATALOG["smollm2-135m"]
    assert entry.gguf is not None
    repo, name = entry.gguf.rsplit("/", 1)
    converted = tmp_path / "tiny.gguf"
    gguf_convert.convert(tiny_model_dir, converted, "f16")
    state = HubState(repos={repo: Repo({name: converted.read_bytes(), "README.md": b"# q8\n"})})
    with hub_server(state) as url:
        proc = axchat_pull_args(["smollm2-135m", "--gguf"], url, data_home)
    assert proc.returncode == 0, proc.stderr
    root = data_home / "axchat" / "models"
    assert [p.name for p in (root / "smollm2-135m").iterdir()] == [name]
    assert resolve.resolve("smollm2-135m", root).source == str(root / "smollm2-135m")
    listed = store.local_models(root)
    assert [(m.name, m.architecture, m.context) for m in listed] == [("smollm2-135m", "llama (GGUF)", 8192)]
    # A catalog model without one says which have one.
    none = axchat_pull_args(["phi-3-mini", "--gguf"], "http://127.0.0.1:9", data_home)
    assert none.returncode == 1 and "smollm2-135m" in none.stderr


def test_interrupted_download_resumes_with_a_range_request(
    hub: tuple[str, HubState], data_home: Path, model_files: dict[str, bytes]
) -> None:
    url, state = hub
    weights = model_files["model.safetensors"]
    cut = len(weights) // 3
    state.break_after["model.safetensors"] = cut

    first = axchat_pull(REPO_ID, url, data_home)
    assert first.returncode == 1
    # Per-file progress lines (stderr is no terminal), then the error: one line, last.
    errors = [line for line in first.stderr.splitlines() if line.startswith("axchat pull:")]
    assert len(errors) == 1 and "resume" in errors[0] and first.stderr.rstrip().endswith(errors[0]), first.stderr
    root = data_home / "axchat" / "models"
    assert not (root / "testorg--tiny-chat").exists()  # nothing half-written looks like a model
    part = root / store.STAGING_DIR / "testorg--tiny-chat" / "model.safetensors.part"
    assert part.read_bytes() == weights[:cut]

    second = axchat_pull(REPO_ID, url, data_home)
    assert second.returncode == 0, second.stderr
    assert (root / "testorg--tiny-chat" / "model.safetensors").read_bytes() == weights
    ranges = [rng for path, rng, _ in state.downloads if path == "model.safetensors"]
    assert ranges == [None, f"bytes={cut}-"]
    # Files finished before the break were not fetched again.
    assert sorted(p for p, _, _ in state.downloads if p != "model.safetensors") == sorted(
        p for p in model_files if p != "model.safetensors"
    )


def test_no_network_is_one_line_and_leaves_nothing(data_home: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    proc = axchat_pull("smollm2-135m", closed, data_home)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0] and "network" in lines[0], proc.stderr
    assert files_under(data_home) == []


def test_gated_model_asks_for_a_token_and_sends_it(model_files: dict[str, bytes], data_home: Path) -> None:
    state = HubState(repos={"meta-llama/Llama-3.2-1B-Instruct": Repo(model_files, token="s3cret")})
    with hub_server(state) as url:
        refused = axchat_pull("llama-3.2-1b", url, data_home)
        assert refused.returncode == 1
        assert "gated" in refused.stderr and "HF_TOKEN" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert files_under(data_home) == []
        ok = axchat_pull("llama-3.2-1b", url, data_home, HF_TOKEN="s3cret")
    assert ok.returncode == 0, ok.stderr
    assert (data_home / "axchat" / "models" / "llama-3.2-1b" / "config.json").is_file()
    assert {auth for _, _, auth in state.downloads} == {"Bearer s3cret"}


def test_the_token_goes_to_the_hub_and_never_to_a_host_it_redirects_to(
    model_files: dict[str, bytes], data_home: Path
) -> None:
    """The hub sends downloads on to a CDN: that other host (here another loopback port)
    must never see HF_TOKEN. The hub's redirects to itself (a renamed repository) keep it."""
    gated = "meta-llama/Llama-3.2-1B-Instruct"
    cdn = HubState(repos={gated: Repo(model_files)})  # open: it would take a token if one came
    with hub_server(cdn) as cdn_url:
        state = HubState(repos={gated: Repo(model_files, token="s3cret"), "meta-llama/renamed": Repo(model_files, token="s3cret")})
        state.redirects = {
            f"/{gated}/resolve/main/model.safetensors": f"{cdn_url}/{gated}/resolve/main/model.safetensors",
            f"/{gated}/resolve/main/config.json": "/meta-llama/renamed/resolve/main/config.json",
        }
        with hub_server(state) as url:
            done = axchat_pull("llama-3.2-1b", url, data_home, HF_TOKEN="s3cret")
    assert done.returncode == 0, done.stderr
    assert cdn.downloads == [("model.safetensors", None, None)]
    assert {auth for _, _, auth in state.downloads} == {"Bearer s3cret"}
    assert [p for p, _, _ in state.downloads].count("config.json") == 2  # asked, then fetched from the new name
    pulled = data_home / "axchat" / "models" / "llama-3.2-1b"
    assert (pulled / "model.safetensors").read_bytes() == model_files["model.safetensors"]


def test_not_enough_disk_stops_before_the_first_byte(
    hub: tuple[str, HubState], data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, with the free-space probe replaced: a real full disk is not to be had in a test."""
    url, state = hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(pull_mod, "free_bytes", lambda path: 1 << 20)
    with pytest.raises(pull_mod.PullError, match="not enough disk"):
        pull_mod.pull(REPO_ID, root=data_home / "models")
    assert state.downloads == []
    assert files_under(data_home) == []
