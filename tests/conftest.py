"""Shared fixtures: the tiny model, real daemon subprocesses, raw protocol clients.

Every wait has a deadline; nothing sleeps to synchronise. Sockets are closed by the
fixture that opened them.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from axchat.curve_keys import ClientKeys, use_keys
from axchat.protocol import v1

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A client that finds no daemon must not start one behind a test's back; the tests of
# autostart remove this on purpose.
os.environ.setdefault("AXCHAT_NO_AUTOSTART", "1")
# A shell runs a background job (`make test &`) with SIGINT ignored, and children inherit
# that: the clients the tests interrupt would then never see their Ctrl-C. A handler
# (unlike SIG_IGN) is reset to the default across exec, so children get Python's usual one.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

READY_TIMEOUT_S = 90.0
REPLY_TIMEOUT_S = 30.0

# The launcher every test daemon runs through: the real CLI plus held requests.
TEST_DAEMON = Path(__file__).resolve().parent / "testdaemon.py"
# A request the test daemon paces (tests/testdaemon.py): still running at the test's next
# step on any machine, until the test cancels it or calls `release_held()`.
HELD_TOKENS = 2000  # at least 40 s while held
HELD: dict[str, object] = {"max_tokens": HELD_TOKENS, "ignore_eos": True}
HELD_ARGS = ["--max-tokens", str(HELD_TOKENS), "--ignore-eos"]  # the same, for `ask` and `chat`


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from axchat.testing import tiny_model

    return tiny_model.build(tmp_path_factory.mktemp("models") / "tiny", seed=0, shape="tiny")


@pytest.fixture(scope="session")
def llamacpp_f32_gguf(tiny_model_dir: Path) -> Path:
    """The tiny model as an f32 GGUF, converted once (and cached in the model store, so
    the daemons the tests start find it there)."""
    from axchat.actors.backends.llamacpp.load import gguf_for

    return gguf_for(tiny_model_dir, "f32", threads=1)


def short_socket_dir() -> Path:
    """ipc paths are limited to ~107 bytes, so not under pytest's long tmp paths."""
    return Path(tempfile.mkdtemp(prefix="axc-"))


class LoggedProcess:
    """A real subprocess with its stderr collected line by line, for waiting on log lines."""

    name = "process"

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=full_env, text=True)
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for_line(self, needle: str, timeout_s: float = READY_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name} never logged {needle!r}; log:\n" + "\n".join(self.lines))
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.wait()}) before logging {needle!r}; log:\n" + "\n".join(self.lines)
                )
            if needle in line:
                return line

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not exit after signal; log:\n" + self.log_text()) from None
        finally:
            self._reader.join(timeout=5)


class DaemonProcess(LoggedProcess):
    """`axchat serve` as a real subprocess, through the test launcher (held requests)."""

    name = "daemon"

    def __init__(
        self, model: Path | str | None, *extra: str, socket: str | None = None, env: dict[str, str] | None = None
    ):
        """model None: no --model flag, so the daemon serves its default (axchat-mini)."""
        # Whether it computes exactly (f32 weights): what transformers computes, whatever
        # else is in the batch. Other weight types agree with that only mostly.
        self.exact = "float32" in extra or "f32" in extra
        self.socket_dir = short_socket_dir()
        self.socket = socket or str(self.socket_dir / "d.sock")
        named = ["--model", str(model)] if model is not None else []
        # The default path unless a test says otherwise: no --dtype or --quant, so a
        # Llama-family model runs where a flag-less `axchat serve` runs it (llama.cpp,
        # q8_0). Tests that compare with transformers' float32 reference ask for
        # `--dtype float32` themselves. No compile (the default today) unless a test
        # asks: it would cost each daemon tens of seconds.
        pinned = []
        if not {"--compile", "--no-compile"} & set(extra):
            pinned.append("--no-compile")
        cmd = [sys.executable, str(TEST_DAEMON), "serve", *named, "--socket", self.socket, *pinned, *extra]
        self.release_file = self.socket_dir / "release-held"
        super().__init__(cmd, {"AXCHAT_TEST_RELEASE_FILE": str(self.release_file), **(env or {})})

    def release_held(self) -> None:
        """Held requests run at full speed from now on, so they can finish."""
        self.release_file.touch()

    def wait_ready(self) -> DaemonProcess:
        self.wait_for_line("ready:")
        return self


class RawClient:
    """A bare DEALER socket speaking frames, for tests that must send bad ones."""

    def __init__(self, endpoint: str, keys: ClientKeys | None = None) -> None:
        """`keys`: speak CURVE with them, for a `tcp://` daemon with an allow-list."""
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            use_keys(self.sock, keys)
        self.sock.connect(endpoint if "://" in endpoint else "ipc://" + endpoint)
        self._held: dict[str, collections.deque[tuple[v1.Envelope, v1.DaemonMessage]]] = {}

    def send(self, request_id: str, body: v1.ClientMessage) -> None:
        self.sock.send_multipart(v1.encode(v1.Envelope(id=request_id), body))

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_s: float = REPLY_TIMEOUT_S, *, want: str | None = None) -> tuple[v1.Envelope, v1.DaemonMessage]:
        """Next frame (for `want` only, if given). Frames for other ids are kept for
        their own readers, so interleaved requests never steal each other's frames."""
        for rid, frames in self._held.items():
            if frames and (want is None or rid == want):
                return frames.popleft()
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise AssertionError(f"no reply{'' if want is None else ' for ' + want} within {timeout_s}s")
            raw_env, raw_body = self.sock.recv_multipart()
            frame = (v1.decode_envelope(raw_env), v1.decode_daemon_body(raw_body))
            if want is None or frame[0].id == want:
                return frame
            self._held.setdefault(frame[0].id, collections.deque()).append(frame)

    def request(self, body: v1.ClientMessage, timeout_s: float = REPLY_TIMEOUT_S) -> v1.DaemonMessage:
        rid = uuid.uuid4().hex[:8]
        self.send(rid, body)
        return self.recv(timeout_s, want=rid)[1]

    def stream(self, request_id: str, timeout_s: float = REPLY_TIMEOUT_S) -> Iterator[v1.DaemonMessage]:
        """Frames for `request_id` until its terminal one."""
        while True:
            _, body = self.recv(timeout_s, want=request_id)
            yield body
            if isinstance(body, v1.TERMINAL):
                return

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def serving(model: Path | str | None, *flags: str) -> Iterator[DaemonProcess]:
    """A ready daemon for a fixture's scope, which must exit 0 when stopped."""
    d = DaemonProcess(model, *flags)
    try:
        d.wait_ready()
        yield d
    except BaseException:
        d.stop()  # a failed test's daemon must not outlive the run
        raise
    code = d.stop()
    assert code == 0, d.log_text()


def connected(d: DaemonProcess) -> Iterator[RawClient]:
    client = RawClient(d.socket)
    yield client
    client.close()


@pytest.fixture(scope="session")
def daemon(tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    """One daemon for the tests that only need a serving one."""
    yield from serving(tiny_model_dir)


@pytest.fixture
def raw(daemon: DaemonProcess) -> Iterator[RawClient]:
    yield from connected(daemon)


@pytest.fixture(scope="session")
def daemon_f32(tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    """A daemon on f32 weights, for the tests that compare with transformers' float32 output."""
    yield from serving(tiny_model_dir, "--dtype", "float32")


@pytest.fixture
def raw_f32(daemon_f32: DaemonProcess) -> Iterator[RawClient]:
    yield from connected(daemon_f32)


def collect(raw: RawClient, rid: str) -> tuple[list[int], str, v1.Done]:
    """A request's reply: its tokens, its text and its `done` (which it must end with)."""
    tokens: list[int] = []
    text = ""
    for body in raw.stream(rid):
        if isinstance(body, v1.Delta):
            tokens += body.token_ids
            text += body.text
        else:
            assert isinstance(body, v1.Done), body
            return tokens, text, body
    raise AssertionError("no terminal frame")


def chat(text: str, **sampling: object) -> v1.Generate:
    return v1.Generate(
        messages=[v1.ChatMessage(role="user", content=text)],
        sampling=v1.Sampling(**sampling),  # type: ignore[arg-type]
    )


def ask_streaming(socket: str, *args: str, timeout_s: float = 60.0) -> subprocess.Popen[bytes]:
    """`axchat ask` as a running process, returned once the first byte of its answer
    has reached stdout (the rest stays in the pipe)."""
    ask = subprocess.Popen(
        [sys.executable, "-m", "axchat", "ask", "--socket", socket, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    started = threading.Event()

    def wait_output() -> None:
        assert ask.stdout is not None
        if ask.stdout.read(1):
            started.set()

    threading.Thread(target=wait_output, daemon=True).start()
    if not started.wait(timeout_s):
        ask.kill()
        ask.wait()
        raise AssertionError(f"axchat ask printed nothing within {timeout_s}s")
    return ask


PROBLEM_DAEMON = Path(__file__).resolve().parent / "problemdaemon.py"


def start_problem_daemon(sock: str, problem_name: str = "die_on_generate", **env: str) -> subprocess.Popen[str]:
    """A daemon that misbehaves as `problem_name` says (tests/problemdaemon.py); by
    default it says hello, then dies as soon as a generate arrives."""
    problem = subprocess.Popen(
        [sys.executable, str(PROBLEM_DAEMON), sock],
        env={**os.environ, **env, "AXCHAT_PROBLEM": problem_name},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert problem.stdout is not None and problem.stdout.readline().strip() == "listening"
    return problem
