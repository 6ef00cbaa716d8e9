"""The system layout: a socket shared with one group, closed to every other user."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DaemonProcess, RawClient, short_socket_dir

from axchat.protocol import v1

GROUP = 54_242  # numeric ids need no /etc/group entry
OUTSIDER = 54_243


def connect_as(uid: int, groups: list[int], path: str) -> int:
    """Try to connect to `path` from a child running as `uid`; its exit code says how it
    went (0 connected, 13 permission denied). A plain AF_UNIX connect is what ZeroMQ's
    ipc transport does, without needing an interpreter the other user may not reach."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups(groups)
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                code = 0
            except PermissionError:
                code = 13
            finally:
                s.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under a second uid")
def test_group_layout_admits_the_group_and_nobody_else(tiny_model_dir: Path) -> None:
    top = short_socket_dir()
    os.chmod(top, 0o755)  # the socket's own directory is the gate under test
    sock = top / "run" / "axchat.sock"
    d = DaemonProcess(tiny_model_dir, "--socket-group", str(GROUP), socket=str(sock)).wait_ready()
    try:
        info = os.stat(sock.parent)
        assert stat.S_IMODE(info.st_mode) == 0o750 and info.st_gid == GROUP
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660 and os.stat(sock).st_gid == GROUP
        assert connect_as(OUTSIDER, [], str(sock)) == 13
        assert connect_as(OUTSIDER, [GROUP], str(sock)) == 0
        client = RawClient(str(sock))
        try:
            assert isinstance(client.request(v1.Ping()), v1.Pong)
        finally:
            client.close()
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("kind", ["regular-file", "symlink", "directory"])
def test_a_stale_path_that_is_not_a_socket_is_refused_and_left_in_place(kind: str, tiny_model_dir: Path) -> None:
    top = short_socket_dir()
    sock = top / "axchat.sock"
    kept = top / "someone-elses-file"
    kept.write_text("keep me\n")
    if kind == "regular-file":
        sock.write_text("keep me too\n")
    elif kind == "symlink":
        sock.symlink_to(kept)
    else:
        sock.mkdir()
    served = subprocess.run(
        [sys.executable, "-m", "axchat", "serve", "--model", str(tiny_model_dir), "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 1 and served.stderr.count("\n") == 1, served.stderr
    assert f"refusing socket path {sock}" in served.stderr and "not a socket" in served.stderr
    assert kept.read_text() == "keep me\n"
    assert sock.is_symlink() if kind == "symlink" else sock.exists()
    if kind == "regular-file":
        assert sock.read_text() == "keep me too\n"
