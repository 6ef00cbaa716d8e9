"""The socket lock names the daemon that holds it, even when the refused one reads the
lock file in the moment between the winner's flock and its pid being written."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from axchat.daemon import socket_lock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_refused_daemon_names_the_holder_written_after_its_first_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "axchat.sock"
    lock = socket_lock.lock_path(sock)
    lock.write_text(f"{dead_pid()}\n")  # an earlier holder that died
    held = os.open(lock, os.O_RDWR)  # the winner: locked, its pid not yet written
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    real_pread = os.pread
    reads = []

    def pread_then_winner_writes(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        if not reads:  # the winner truncates and writes just after the loser's first read
            os.ftruncate(held, 0)
            os.pwrite(held, f"{os.getpid()}\n".encode(), 0)
        reads.append(data)
        return data

    monkeypatch.setattr(socket_lock.os, "pread", pread_then_winner_writes)
    try:
        with pytest.raises(socket_lock.SocketTaken, match=rf"\(pid {os.getpid()}\)"):
            socket_lock.take(sock)
        assert len(reads) >= 2  # the stale pid was not taken for the holder
    finally:
        os.close(held)


def test_a_holder_that_never_writes_its_pid_is_unknown_after_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket_lock, "HOLDER_WAIT_S", 0.05)
    sock = tmp_path / "axchat.sock"
    held = os.open(socket_lock.lock_path(sock), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(socket_lock.SocketTaken, match=r"\(pid unknown\)"):
            socket_lock.take(sock)
    finally:
        os.close(held)


def test_the_lock_is_taken_and_holds_our_pid(tmp_path: Path) -> None:
    sock = tmp_path / "axchat.sock"
    fd = socket_lock.take(sock)
    try:
        assert socket_lock.lock_path(sock).read_text().strip() == str(os.getpid())
    finally:
        os.close(fd)
