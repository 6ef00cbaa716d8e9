"""Start-up, refusal and shutdown of a real daemon process."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HELD, HELD_TOKENS, DaemonProcess, RawClient, chat, short_socket_dir

from axchat.protocol import v1


def serve_fails(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "axchat", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("axchat serve: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_missing_model_path_is_one_line_error() -> None:
    sock = short_socket_dir() / "d.sock"
    proc = serve_fails("--model", "/nonexistent/model-dir", "--socket", str(sock))
    assert "/nonexistent/model-dir does not exist" in error_line(proc.stderr)


def test_model_that_is_not_a_causal_lm(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    sock = short_socket_dir() / "d.sock"
    proc = serve_fails("--model", str(tmp_path), "--socket", str(sock))
    assert "not a causal language model" in error_line(proc.stderr)


def test_world_readable_socket_dir_is_refused(tiny_model_dir: Path) -> None:
    shared = short_socket_dir()
    os.chmod(shared, 0o777)
    proc = serve_fails("--model", str(tiny_model_dir), "--socket", str(shared / "d.sock"))
    assert "lets every user in" in error_line(proc.stderr)


def test_default_socket_in_private_runtime_dir(tiny_model_dir: Path) -> None:
    runtime = short_socket_dir()
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    env_no_socket = {k: v for k, v in os.environ.items() if k != "AXCHAT_SOCKET"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "axchat", "serve", "--model", str(tiny_model_dir)],
        env={**env_no_socket, **env, "PYTHONUNBUFFERED": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "ready:" in line:
                break
        else:
            raise AssertionError("daemon exited before ready")
        directory = runtime / "axchat"
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert (directory / "axchat.sock").exists()
        status = subprocess.run(
            [sys.executable, "-m", "axchat", "status", "--json"],
            env={**env_no_socket, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["model"] == tiny_model_dir.name
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (runtime / "axchat" / "axchat.sock").exists()


def test_second_daemon_on_same_socket_is_refused(daemon: DaemonProcess, tiny_model_dir: Path) -> None:
    proc = serve_fails("--model", str(tiny_model_dir), "--socket", daemon.socket)
    assert "already serving" in error_line(proc.stderr)


def test_stale_socket_after_sigkill_does_not_block_restart(tiny_model_dir: Path) -> None:
    first = DaemonProcess(tiny_model_dir).wait_ready()
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert Path(first.socket).exists()  # SIGKILL left the socket file behind
    second = DaemonProcess(tiny_model_dir, socket=first.socket).wait_ready()
    try:
        assert "removing stale socket" in second.log_text()
        client = RawClient(second.socket)
        try:
            assert isinstance(client.request(v1.Ping()), v1.Pong)
        finally:
            client.close()
    finally:
        assert second.stop() == 0


def test_sigterm_lets_running_request_finish_and_refuses_new_ones(tiny_model_dir: Path) -> None:
    d = DaemonProcess(tiny_model_dir, "--drain-timeout", "60").wait_ready()
    a, b = RawClient(d.socket), RawClient(d.socket)
    try:
        a.send("run", chat("finish me", **HELD))
        _, first = a.recv()
        assert isinstance(first, v1.Delta)
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for_line("draining")
        b.send("late", chat("too late", max_tokens=3))
        _, refused = b.recv()
        assert isinstance(refused, v1.Error) and refused.code == "shutting_down"
        d.release_held()  # now the running request may finish, inside the drain timeout
        done = list(a.stream("run"))[-1]
        assert isinstance(done, v1.Done) and done.finish_reason == "length"
        assert done.usage.completion_tokens == HELD_TOKENS
        assert d.stop() == 0
    finally:
        a.close()
        b.close()


def test_sigterm_past_drain_timeout_cancels_and_tells_the_client(tiny_model_dir: Path) -> None:
    d = DaemonProcess(tiny_model_dir, "--drain-timeout", "0.2").wait_ready()
    a = RawClient(d.socket)
    try:
        a.send("run", chat("never ends", **HELD))
        _, first = a.recv()
        assert isinstance(first, v1.Delta)
        d.proc.send_signal(signal.SIGTERM)
        done = list(a.stream("run"))[-1]
        assert isinstance(done, v1.Done) and done.finish_reason == "cancelled"
        assert done.usage.completion_tokens < HELD_TOKENS
        assert d.stop() == 0
        assert "drain timeout: cancelling 1 request" in d.log_text()
    finally:
        a.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_idle_daemon_exits_zero_on_signal(tiny_model_dir: Path, sig: int) -> None:
    d = DaemonProcess(tiny_model_dir).wait_ready()
    assert d.stop(sig) == 0
    assert "stopped" in d.log_text()
    assert not Path(d.socket).exists()


def test_tcp_endpoint_and_context_flag(tiny_model_dir: Path) -> None:
    # Without CURVE keys a tcp socket must be marked insecure (loopback only; tests/daemon/test_curve.py).
    d = DaemonProcess(tiny_model_dir, "--context", "256", "--insecure-tcp", socket="tcp://127.0.0.1:*")
    try:
        ready = d.wait_for_line("ready:")
        endpoint = ready.split(" on ")[1].split(" ")[0]
        assert endpoint.startswith("tcp://127.0.0.1:")
        client = RawClient(endpoint)
        try:
            welcome = client.request(v1.Hello())
            assert isinstance(welcome, v1.Welcome) and welcome.context_length == 256
            client.send("long", v1.Generate(prompt=" ".join(f"w{i}" for i in range(300))))
            _, err = client.recv()
            assert isinstance(err, v1.Error) and err.code == "context_overflow" and "256" in err.message
            # A reply may use the context up to its last position, then stops as `length`.
            client.send("fill", v1.Generate(prompt="hello", sampling=v1.Sampling(max_tokens=1000, ignore_eos=True)))
            done = list(client.stream("fill"))[-1]
            assert isinstance(done, v1.Done) and done.finish_reason == "length"
            assert done.usage.prompt_tokens + done.usage.completion_tokens == 256
        finally:
            client.close()
    finally:
        assert d.stop() == 0
