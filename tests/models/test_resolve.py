"""What `--model` names: bundled, catalog name (pulled or not), path, hub id."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import short_socket_dir

from axchat.models import catalog, resolve, store


def fake_pulled(root: Path, directory: str) -> Path:
    path = root / directory
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 8192}')
    return path


def test_no_model_is_the_bundled_one_with_a_hint(tmp_path: Path) -> None:
    got = resolve.resolve(None, tmp_path)
    assert got.source == str(catalog.BUNDLED_DIR) and got.aliases == ("axchat-mini",)
    assert got.note is not None and "axchat pull" in got.note and "--model" in got.note
    assert resolve.resolve("axchat-mini", tmp_path).source == str(catalog.BUNDLED_DIR)


def test_catalog_name_is_the_store_copy_once_pulled_else_the_hub_id(tmp_path: Path) -> None:
    entry = catalog.CATALOG["smollm2-360m"]
    before = resolve.resolve("smollm2-360m", tmp_path)
    assert before.source == entry.hub_id and before.note is not None and "axchat pull smollm2-360m" in before.note
    pulled = fake_pulled(tmp_path, "smollm2-360m")
    for spelling in ("smollm2-360m", entry.hub_id):
        got = resolve.resolve(spelling, tmp_path)
        assert got.source == str(pulled)
        assert {"smollm2-360m", entry.hub_id} <= set(got.aliases)  # generate requests may name either


def test_hub_id_outside_the_catalog_and_paths(tmp_path: Path) -> None:
    assert resolve.resolve("someorg/some-model", tmp_path).source == "someorg/some-model"
    pulled = fake_pulled(tmp_path, "someorg--some-model")
    assert resolve.resolve("someorg/some-model", tmp_path).source == str(pulled)
    assert resolve.resolve(str(pulled), tmp_path).source == str(pulled)
    assert resolve.resolve("/no/such/dir", tmp_path).source == "/no/such/dir"  # the loader says it is missing
    assert store.dir_name("someorg/some-model") == "someorg--some-model"


def test_a_metis_catalog_name_is_left_to_the_aipu_backend(tmp_path: Path) -> None:
    resolved = resolve.resolve("phi3-mini-1024-4core-static", tmp_path)
    assert resolved.source == "phi3-mini-1024-4core-static" and not resolved.from_hub
    resolve.ensure_available(resolved)  # nothing to fetch: it lives in the SDK's build tree


def test_a_misspelt_name_is_refused_at_once_naming_axchat_models(tmp_path: Path) -> None:
    for typo in ("nosuchmodel", "smollm2-360", "smollm2 360m"):
        with pytest.raises(resolve.ModelNotFound, match="`axchat models`"):
            resolve.resolve(typo, tmp_path)


def test_a_model_not_here_with_no_hub_is_one_line_saying_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("smollm2-360m", "someorg/some-model"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(resolve.ModelNotFound, match=f"HF_HUB_OFFLINE is set: `axchat pull {name}`"):
            resolve.ensure_available(resolve.resolve(name, tmp_path))
        # Online, but the hub cannot be reached: a refused port answers at once.
        monkeypatch.delenv("HF_HUB_OFFLINE")
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
            with pytest.raises(resolve.ModelNotFound, match=f"cannot reach .*`axchat pull {name}`"):
                resolve.ensure_available(resolve.resolve(name, tmp_path))
    fake_pulled(tmp_path, "smollm2-360m")
    resolve.ensure_available(resolve.resolve("smollm2-360m", tmp_path))  # here: nothing to ask the hub


def test_serve_refuses_a_misspelt_model_in_one_line(tmp_path: Path) -> None:
    sock_dir = short_socket_dir()
    for check in ([], ["--check"]):
        proc = subprocess.run(
            [sys.executable, "-m", "axchat", "serve", *check, "--socket", str(sock_dir / "d.sock"), "--model", "nosuchmodel"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "unknown model 'nosuchmodel'" in proc.stderr and "axchat models" in proc.stderr
