"""The default path without torch: the daemon on llama.cpp never maps libtorch (nor, until
a request needs them, the `tokenizers` and llguidance libraries), and a fresh `make run`
venv (no torch, no transformers in it at all) serves `ask`, `chat`, `status` and `web`.

The venv is real, made by the Makefile as a user's clone makes it: `make run VENV=...`
installs the package without the torch extra from the package index (pip's cache makes
that a minute) and the engine from the wheel `make test` already built and cached in
~/.cache/axchat/engine (no compile). A venv borrowing the shared site-packages behind an
import hook that hides torch would prove less: a library that opens libtorch by path, or
a dependency that pulls torch in, would go unseen, and its size would say nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import DaemonProcess, LoggedProcess, chat, collect, connected, serving, short_socket_dir
from terminal_pane import Pane

from axchat.protocol import v1

REPO = Path(__file__).resolve().parents[1]
MAKE_TIMEOUT_S = 900  # a fresh venv: pip from its cache, the engine's self-test on every weight type
VENV_LIMIT_MIB = 400
LISTENING = re.compile(r"listening: (http://\S+/)")


def maps_torch(pid: int) -> list[str]:
    return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "torch" in line]


def test_the_default_daemon_never_maps_libtorch(daemon: DaemonProcess) -> None:
    # The shared venv has torch installed: only what the daemon imports decides.
    assert maps_torch(daemon.proc.pid) == []


# Native libraries a default daemon has no use for while it serves plain chats: the
# `tokenizers` library (libllama's vocabulary, which the engine holds anyway, tokenizes
# a converted model) and llguidance (loaded by the first constrained request); sqlite3,
# which only llama-cpp-python's high-level half (its disk cache) imports; the statistics
# module (its C part), which a median of a few load timings does not need; the rest are
# the web bridge's (aiohttp and its C parts), never the daemon's.
UNUSED_AT_START = ("torch", "tokenizers.abi3", "llguidance", "sqlite3", "_statistics", "aiohttp", "yarl", "multidict")


def unused_mapped(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in UNUSED_AT_START if name in maps]


def test_a_default_daemon_maps_tokenizers_and_llguidance_only_when_a_request_needs_them(tiny_model_dir: Path) -> None:
    # A daemon of its own: the session's daemon may have served constrained requests.
    for d in serving(tiny_model_dir):
        for client in connected(d):
            client.send("plain", chat("Tell me a story", max_tokens=8))
            assert collect(client, "plain")[2].finish_reason in ("length", "stop")
            assert unused_mapped(d.proc.pid) == []
            gen = chat("Give JSON", max_tokens=16)
            gen.constraint = v1.Constraint(kind="json_schema", schema=json.dumps({"type": "object"}))
            rid = uuid.uuid4().hex[:8]
            client.send(rid, gen)
            done = collect(client, rid)[2]
            assert done.finish_reason in ("length", "stop")
            assert unused_mapped(d.proc.pid) == ["llguidance"]


class LeanVenv:
    def __init__(self, root: Path) -> None:
        self.venv = root / "venv"
        self.python = self.venv / "bin" / "python"
        self.socket = str(short_socket_dir() / "d.sock")
        # The lean venv's own packages only: no test path into the shared venv's.
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env["XDG_DATA_HOME"] = str(root / "data")  # chat's saved conversations

    def run(self, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-m", "axchat", *args, "--socket", self.socket],
            input=stdin, capture_output=True, text=True, timeout=timeout, env=self.env,
        )  # fmt: skip


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeanVenv]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    v = LeanVenv(tmp_path_factory.mktemp("lean"))
    made = subprocess.run(
        ["make", "-C", str(REPO), "run", f"VENV={v.venv}", f"SOCKET={v.socket}", "PROMPT=Tell me a joke"],
        capture_output=True, text=True, timeout=MAKE_TIMEOUT_S, env=v.env,
    )  # fmt: skip
    if made.returncode != 0 and "Could not find a version" in made.stderr:
        pytest.skip("no package index reachable for a fresh venv: " + made.stderr.strip().splitlines()[-1])
    assert made.returncode == 0, made.stdout + made.stderr
    v.make_output = made.stdout  # type: ignore[attr-defined]
    try:
        yield v
    finally:
        v.run("stop")


def test_make_run_installs_no_torch_and_answers(lean: LeanVenv) -> None:
    site = subprocess.run(
        [str(lean.python), "-c", "import importlib.util as u; print([n for n in ('torch', 'transformers') if u.find_spec(n)])"],
        capture_output=True, text=True, timeout=60, env=lean.env, check=True,
    )  # fmt: skip
    assert site.stdout.strip() == "[]"
    assert lean.make_output.strip()  # type: ignore[attr-defined]  # `ask --stats` printed the answer
    mib = int(subprocess.run(["du", "-sm", str(lean.venv)], capture_output=True, text=True, check=True).stdout.split()[0])
    assert mib <= VENV_LIMIT_MIB, f"the make-run venv is {mib} MiB"


def test_ask_status_and_chat_without_torch(lean: LeanVenv) -> None:
    status = lean.run("status", "--json")
    assert status.returncode == 0, status.stderr
    facts = json.loads(status.stdout)
    assert facts["backend"] == "llamacpp"
    assert maps_torch(int(facts["pid"])) == []
    assert facts["weights_bytes"] > 0 and facts["running_kv_bytes"] > 0
    answer = lean.run("ask", "--max-tokens", "8", "Tell me a quote")
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
    chat = lean.run("chat", "--plain", "--max-tokens", "8", stdin="Hello\nquit\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.startswith("User: Hello\nAssistant: ") and chat.stdout.endswith("User: quit\n")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_full_screen_chat_without_torch(lean: LeanVenv) -> None:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "XDG_DATA_HOME")
    pane = Pane(
        [str(lean.python), "-m", "axchat", "chat", "--socket", lean.socket, "--max-tokens", "8"],
        {k: lean.env[k] for k in keep if k in lean.env},
    )
    try:
        pane.wait(lambda s: "connected:" in s, "the chat to connect")
        pane.keys("Hello", "Enter")
        pane.wait(lambda s: "Tokens: " in s.split("Hello", 1)[-1], "an answer")
        pane.keys("/quit", "Enter")
        pane.wait(lambda s: s == "", "the chat to end")
    finally:
        pane.close()


def test_web_bridge_without_torch(lean: LeanVenv) -> None:
    # `make run` installs no web extra: the user adds it as the README says.
    added = subprocess.run(
        [str(lean.python), "-m", "pip", "install", "-q", "-e", f"{REPO}[web]"],
        capture_output=True, text=True, timeout=600, env=lean.env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    bridge = LoggedProcess([str(lean.python), "-m", "axchat", "web", "--port", "0", "--socket", lean.socket], lean.env)
    try:
        found = LISTENING.search(bridge.wait_for_line("listening:", timeout_s=60))
        assert found is not None
        assert maps_torch(bridge.proc.pid) == []
        with openai.OpenAI(base_url=found.group(1) + "v1", api_key="unused", max_retries=0, timeout=60) as client:
            model = client.models.list().data[0].id
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
        assert reply.choices[0].message.content
        with urllib.request.urlopen(found.group(1) + "metrics", timeout=60) as response:
            metrics = response.read().decode()
        assert 'axchat_daemon_memory_bytes{part="weights"}' in metrics
    finally:
        assert bridge.stop() == 0, bridge.log_text()


@pytest.mark.parametrize("flag", [["--backend", "torch"], ["--device", "cuda"]])
def test_torch_where_it_is_needed_is_one_line_naming_the_extra(lean: LeanVenv, flag: list[str]) -> None:
    socket = str(short_socket_dir() / "torch.sock")
    done = subprocess.run(
        [str(lean.python), "-m", "axchat", "serve", *flag, "--socket", socket],
        capture_output=True, text=True, timeout=120, env=lean.env,
    )  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == ["axchat serve: error: the torch backend needs torch and transformers, which axchat installs only "
                      "as an extra: pip install 'axchat[torch]'"], done.stderr  # fmt: skip


def test_the_test_model_builder_names_the_extra(lean: LeanVenv, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(lean.python), "-m", "axchat.testing.tiny_model", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120, env=lean.env,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().endswith("needs torch and transformers, which axchat installs only as an extra: pip install 'axchat[torch]'")
