"""sd_notify: a real daemon talking to a real datagram socket the test opens, as
systemd's NOTIFY_SOCKET would be."""

from __future__ import annotations

import itertools
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HELD, HELD_TOKENS, DaemonProcess, RawClient, chat, short_socket_dir

from axchat.daemon.notify import Notifier, watchdog_usec
from axchat.protocol import v1

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s; systemd would give up after 1 s


class NotifyListener:
    """The service manager's end: a bound SOCK_DGRAM socket and a reader thread."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: queue.Queue[tuple[float, dict[str, str]]] = queue.Queue()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.put((time.monotonic(), fields))

    def next(self, timeout_s: float = 90.0) -> dict[str, str]:
        try:
            return self.messages.get(timeout=timeout_s)[1]
        except queue.Empty:
            raise AssertionError(f"no notify datagram within {timeout_s}s") from None

    def until(self, key: str, timeout_s: float = 90.0) -> tuple[list[dict[str, str]], dict[str, str]]:
        """Datagrams before the first one carrying `key`, and that one."""
        deadline = time.monotonic() + timeout_s
        before: list[dict[str, str]] = []
        while True:
            msg = self.next(max(deadline - time.monotonic(), 0.01))
            if key in msg:
                return before, msg
            before.append(msg)

    def collect_until(self, key: str, count: int, timeout_s: float = 30.0) -> list[tuple[float, dict[str, str]]]:
        """Timestamped datagrams up to the `count`-th one carrying `key`."""
        deadline = time.monotonic() + timeout_s
        out: list[tuple[float, dict[str, str]]] = []
        while sum(key in m for _, m in out) < count:
            try:
                out.append(self.messages.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f"fewer than {count} {key} datagrams within {timeout_s}s: {out}") from None
        return out

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._closing.set()
        self._reader.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[tuple[str, NotifyListener]]:
    path = str(short_socket_dir() / "notify")
    lst = NotifyListener(path)
    yield path, lst
    lst.close()


def test_ready_watchdog_and_stopping(tiny_model_dir: Path, listener: tuple[str, NotifyListener]) -> None:
    path, lst = listener
    d = DaemonProcess(tiny_model_dir, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    client: RawClient | None = None
    try:
        before, ready = lst.until("READY")
        assert ready["READY"] == "1" and ready["MAINPID"] == str(d.proc.pid)
        # READY is sent after the ready line is written, so the line is already in the pipe.
        d.wait_for_line("ready:", timeout_s=5)
        assert any(m.get("STATUS", "").startswith("loading ") for m in before), before
        assert not any("READY" in m for m in before)
        # The long start-up load asks for more time than TimeoutStartSec would give.
        extended = [int(m["EXTEND_TIMEOUT_USEC"]) for m in before if "EXTEND_TIMEOUT_USEC" in m]
        assert extended and min(extended) >= 10_000_000, before

        client = RawClient(d.socket)
        client.send("long", chat("go on", **HELD))
        _, first = client.recv()
        assert isinstance(first, v1.Delta)
        early = lst.drain()
        # The answer is held (still running, whatever the machine's speed) while the loop
        # pings; then it may run to its end.
        during = lst.collect_until("WATCHDOG", 3)
        d.release_held()
        frames = list(client.stream("long"))
        during += lst.drain()
        done = frames[-1]
        assert isinstance(done, v1.Done) and done.usage.completion_tokens == HELD_TOKENS
        assert not any("EXTEND_TIMEOUT_USEC" in m for _, m in early + during)  # only while starting
        pings = [t for t, m in during if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 3, during
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < WATCHDOG_USEC / 1e6, f"the loop stalled between pings: {gaps}"
        assert any(m.get("STATUS") == "serving 1 request(s)" for _, m in early + during), early + during

        d.proc.send_signal(signal.SIGTERM)
        _, stopping = lst.until("STOPPING", timeout_s=30)
        assert stopping["STOPPING"] == "1"
        assert d.stop() == 0
    finally:
        if client is not None:
            client.close()
        d.stop()


def test_no_notify_socket_means_no_datagrams(tiny_model_dir: Path) -> None:
    d = DaemonProcess(tiny_model_dir, env={"NOTIFY_SOCKET": ""}).wait_ready()
    assert d.stop() == 0


def test_abstract_notify_socket() -> None:
    name = f"axchat-test-{uuid.uuid4().hex}"
    lst = NotifyListener(b"\0" + name.encode())
    try:
        notifier = Notifier(f"@{name}")
        notifier.ready("serving x")
        msg = lst.next(5)
        assert msg == {"READY": "1", "STATUS": "serving x", "MAINPID": str(os.getpid())}
        notifier.close()
    finally:
        lst.close()


def test_watchdog_pid_must_be_ours() -> None:
    assert watchdog_usec({"WATCHDOG_USEC": "1000000"}, 42) == 1_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}, 42) == 1_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_usec({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_usec({}, 42) is None
    assert Notifier(None, 2_000_000).watchdog_interval_s == 1.0
