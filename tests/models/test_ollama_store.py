"""Ollama's store read in place: a real store layout built from the tiny model's GGUF
(manifest, config blob, model/params/system layers under their true digests) is served
by a real daemon and listed by `axchat models`; each way a store can be wrong is one line."""

from __future__ import annotations

import json
import os
import pwd
import struct
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from conftest import DaemonProcess, RawClient, chat, short_socket_dir
from ollama_layout import PARAMS, SYSTEM, write_model

from axchat.models import ollama_store, resolve
from axchat.protocol import v1


@pytest.fixture
def store(tmp_path: Path, llamacpp_f32_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ollama"
    write_model(root, llamacpp_f32_gguf.read_bytes(), ("registry.ollama.ai", "library", "tiny", "latest"))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def test_names_resolve_to_the_blob_in_place_with_params_and_system(store: Path, llamacpp_f32_gguf: Path) -> None:
    write_model(store, llamacpp_f32_gguf.read_bytes(), ("hf.co", "someorg", "tiny-gguf", "Q8_0"))
    found = resolve.resolve("ollama:tiny")
    assert found.ollama is not None and found.aliases == ("ollama:tiny", "ollama:tiny:latest")
    assert Path(found.source).parent == store / "blobs" and Path(found.source).name.startswith("sha256-")
    assert found.ollama.params == PARAMS and found.ollama.system == SYSTEM
    assert resolve.resolve("ollama:hf.co/someorg/tiny-gguf:Q8_0").source == found.source
    assert ollama_store.manifest_parts("someone/thing") == ("registry.ollama.ai", "someone", "thing", "latest")


def _refusal(model: str) -> str:
    with pytest.raises(resolve.ModelNotFound) as caught:
        resolve.resolve(model)
    line = str(caught.value)
    assert "\n" not in line
    return line


def test_each_broken_store_gets_its_line(store: Path, llamacpp_f32_gguf: Path) -> None:
    gguf = llamacpp_f32_gguf.read_bytes()
    assert "no manifest at" in _refusal("ollama:absent:7b") and str(store / "manifests") in _refusal("ollama:absent")

    bad = write_model(store, gguf, ("registry.ollama.ai", "library", "bad", "latest"))
    blob = store / "blobs" / ("sha256-" + json.loads(bad.read_text())["layers"][0]["digest"].split(":")[1])
    (store / "blobs" / "copy").write_bytes(gguf)
    flipped = bytearray(gguf)
    flipped[-1] ^= 1
    blob.write_bytes(flipped)  # the same size, another digest
    assert "does not match its digest" in _refusal("ollama:bad")
    assert "does not match its digest" in _refusal("ollama:tiny")  # the same blob

    blob.unlink()
    assert "is missing" in _refusal("ollama:tiny")
    blob.mkdir()
    assert "not a regular file" in _refusal("ollama:tiny")
    blob.rmdir()
    (store / "blobs" / "copy").rename(blob)

    cloud = store / "manifests" / "registry.ollama.ai" / "library" / "cloud" / "latest"
    cloud.parent.mkdir(parents=True)
    cloud.write_text(json.dumps({"schemaVersion": 2, "layers": [], "remote_host": "https://ollama.com:443"}))
    assert "has no model layer" in _refusal("ollama:cloud")

    write_model(store, gguf, ("registry.ollama.ai", "library", "lora", "latest"), [("application/vnd.ollama.image.adapter", b"GGUF")])
    assert "LoRA adapter" in _refusal("ollama:lora")
    write_model(store, gguf, ("registry.ollama.ai", "library", "eyes", "latest"), [("application/vnd.ollama.image.projector", b"GGUF")])
    assert "vision projector" in _refusal("ollama:eyes")
    assert "not an Ollama model name" in _refusal("ollama:../../etc:passwd")


def test_an_unreadable_store_says_how_to_grant_access(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As Ollama's service leaves it to other users (root reads any mode: the check is stood in for).
    store.chmod(0o700)
    monkeypatch.setattr(ollama_store.os, "access", lambda path, mode: Path(path) != store)
    monkeypatch.setattr(ollama_store.Path, "exists", lambda self: self == store)
    line = _refusal("ollama:tiny")
    assert "permission denied" in line and "setfacl" in line and str(store) in line
    # Named for the user the daemon runs as (the service's own), not whoever reads the line.
    assert f"u:{pwd.getpwuid(os.geteuid()).pw_name}:rX" in line


def test_models_lists_ollamas_beside_axchats(store: Path, tmp_path: Path, llamacpp_f32_gguf: Path) -> None:
    write_model(store, b"GGUF" + b"\0" * 8, ("registry.ollama.ai", "library", "broken", "latest"))
    proc = subprocess.run(
        [sys.executable, "-m", "axchat.models.listing"],
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    row = next(line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["ollama:tiny:latest"])
    size_mb = llamacpp_f32_gguf.stat().st_size / 1e6
    assert row[1:3] == [f"{size_mb:.1f}", "MB"] and row[4:] == ["llama", "(GGUF)", "Ollama's,", "f32"], proc.stdout
    # A model whose header cannot be read is listed, said why on stderr, and the exit is 1.
    assert proc.returncode == 1 and "ollama:broken:latest" in proc.stdout
    assert proc.stderr.startswith("axchat models: ollama:broken:latest: ") and "GGUF version 0" in proc.stderr


def test_the_daemon_serves_an_ollama_model(store: Path) -> None:
    served = DaemonProcess("ollama:tiny", env={"OLLAMA_MODELS": str(store)}).wait_ready()
    try:
        client = RawClient(served.socket)
        try:
            welcome = client.request(v1.Hello())
            assert isinstance(welcome, v1.Welcome) and (welcome.backend, welcome.dtype, welcome.model) == (
                "llamacpp",
                "f32",
                "ollama:tiny:latest",
            )
            ask = chat("Tell me about cats", max_tokens=6, ignore_eos=True)
            client.send("o1", msgspec.structs.replace(ask, model="ollama:tiny"))  # the user's spelling is served
            done = [body for body in client.stream("o1") if isinstance(body, v1.Done)]
            assert done and done[0].finish_reason == "length"
        finally:
            client.close()
    finally:
        assert served.stop() == 0, served.log_text()


def _serve(store: Path, model: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axchat", "serve", "--model", model, "--socket", str(short_socket_dir() / "d.sock"), *flags],
        env={**os.environ, "OLLAMA_MODELS": str(store)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_what_cannot_be_served_stops_the_daemon_in_one_line(store: Path) -> None:
    # A GGUF whose architecture this llama.cpp does not know, as a newer Ollama may pull.
    def text(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    future = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("general.architecture") + struct.pack("<I", 8) + text("nosucharch")
    write_model(store, future, ("registry.ollama.ai", "library", "future", "latest"))
    for flags in ((), ("--check",)):  # the service's check before it starts says so too
        done = _serve(store, "ollama:future", *flags)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert "its architecture is 'nosucharch'" in done.stderr.splitlines()[-1], done.stderr
    # A params layer no request could run with is refused before any load.
    tiny = (store / "blobs").glob("sha256-*")
    gguf = next(p for p in tiny if p.read_bytes()[:4] == b"GGUF" and p.stat().st_size > 1000).read_bytes()
    write_model(store, gguf, ("registry.ollama.ai", "library", "odd", "latest"), params={"temperature": -1})
    for flags in ((), ("--check",)):
        done = _serve(store, "ollama:odd", *flags)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        last = done.stderr.splitlines()[-1]
        assert "ollama:odd:latest: its params layer cannot be used: temperature must be" in last, done.stderr
