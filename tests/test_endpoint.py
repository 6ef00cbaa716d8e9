"""Where clients look for the daemon: the system service's socket is found by itself
when the user has no daemon of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from conftest import DaemonProcess, short_socket_dir

from axchat import endpoint as ep
from axchat.client import Client


@pytest.fixture
def no_own_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No --socket, no $AXCHAT_SOCKET, and a per-user runtime directory with no socket."""
    monkeypatch.delenv(ep.ENV_SOCKET, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "run" / "axchat" / ep.SOCKET_NAME


def test_client_finds_the_system_daemon_when_it_has_none_of_its_own(
    no_own_daemon: Path, daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ep, "SYSTEM_SOCKET", daemon.socket)  # the test daemon plays /run/axchat
    assert ep.client_endpoint(None) == ep.to_zmq(daemon.socket)
    with Client() as client:
        assert client.hello().model and client.endpoint == ep.to_zmq(daemon.socket)


def test_own_socket_explicit_choice_or_no_system_socket_win(
    no_own_daemon: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    system = tmp_path / "system.sock"
    monkeypatch.setattr(ep, "SYSTEM_SOCKET", str(system))
    own = ep.to_zmq(None)
    assert ep.client_endpoint(None) == own  # no system socket either: the per-user default
    system.touch()
    assert ep.client_endpoint(None) == ep.to_zmq(str(system))
    assert ep.client_endpoint(str(tmp_path / "chosen.sock")) == ep.to_zmq(str(tmp_path / "chosen.sock"))
    monkeypatch.setenv(ep.ENV_SOCKET, str(tmp_path / "env.sock"))
    assert ep.client_endpoint(None) == ep.to_zmq(str(tmp_path / "env.sock"))
    monkeypatch.delenv(ep.ENV_SOCKET)
    no_own_daemon.parent.mkdir(parents=True)
    no_own_daemon.touch()  # a per-user daemon's socket: that one, not the system's
    assert ep.client_endpoint(None) == own


# ---------------------------------------------------------------- squatting

OUTSIDER = 54_243  # a numeric uid with no /etc/passwd entry: "another user"


def squatted_dir(owner: int, mode: int) -> Path:
    """A socket directory as another user would pre-create it, under a world-writable
    parent like /tmp (so root did not make it for a service)."""
    top = short_socket_dir()
    os.chmod(top, 0o1777)
    squat = top / "axchat-squat"
    squat.mkdir()
    os.chmod(squat, mode)
    if owner != os.getuid():
        os.chown(squat, owner, -1)
    return squat


def ask_at(socket: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AXCHAT_NO_AUTOSTART"}  # autostart on
    return subprocess.run(
        [sys.executable, "-m", "axchat", "ask", "--socket", socket, "hi"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("owner", "mode"),
    [
        pytest.param(OUTSIDER, 0o755, id="another-users-directory"),
        pytest.param(os.getuid(), 0o777, id="own-but-world-writable"),
    ],
)
def test_ask_refuses_a_squatted_socket_and_sends_it_nothing(owner: int, mode: int) -> None:
    if owner != os.getuid() and os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another uid")
    squat = squatted_dir(owner, mode)
    sock = squat / "axchat.sock"
    ctx = zmq.Context()
    impostor = ctx.socket(zmq.ROUTER)
    impostor.setsockopt(zmq.LINGER, 0)
    impostor.bind(f"ipc://{sock}")
    try:
        result = ask_at(str(sock))
        assert result.returncode != 0 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "refusing socket directory" in result.stderr, result.stderr
        assert not impostor.poll(0), "the client sent its hello (and prompt) to the impostor"
        assert sorted(p.name for p in squat.iterdir()) == ["axchat.sock"]  # no daemon, no lock started there
    finally:
        impostor.close()
        ctx.term()


def test_own_private_directory_and_a_root_made_service_directory_are_trusted() -> None:
    own = short_socket_dir()
    assert ep.untrusted_reason(ep.to_zmq(str(own / "a.sock"))) is None
    assert ep.untrusted_reason(ep.to_zmq(str(own / "not-yet" / "a.sock"))) is None
    assert ep.untrusted_reason("tcp://127.0.0.1:5555") is None
    if os.geteuid() == 0:
        # /run/axchat as systemd makes it: the service user's, inside root's closed /run.
        service = own / "axchat"
        service.mkdir(mode=0o750)
        os.chown(service, OUTSIDER, OUTSIDER)
        assert ep.untrusted_reason(ep.to_zmq(str(service / "axchat.sock"))) is None


def test_socket_directory_open_to_a_foreign_group_is_refused() -> None:
    """The daemon's side of item 9: 0770 with another group is not "closed to others"."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory another group")
    d = short_socket_dir()
    os.chmod(d, 0o770)
    os.chown(d, -1, OUTSIDER)
    with pytest.raises(ep.EndpointError, match="lets group"):
        ep.prepare_private_dir(d)
    ep.prepare_private_dir(d, group=OUTSIDER)  # the group named on purpose: accepted


# ---------------------------------------------------------------- symbolic links


def serve_at(socket: str, model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axchat", "serve", "--model", str(model), "--socket", socket],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_symlinks_in_the_socket_path_are_refused_by_daemon_and_client(
    daemon: DaemonProcess, tiny_model_dir: Path
) -> None:
    """A link is judged by what it points to today and can be repointed tomorrow: neither
    the socket's directory nor the socket itself may be one."""
    top = short_socket_dir()
    real = top / "real"
    real.mkdir(mode=0o700)
    (top / "dir-link").symlink_to(real)
    served = serve_at(str(top / "dir-link" / "axchat.sock"), tiny_model_dir)
    assert served.returncode == 1 and served.stderr.count("\n") == 1, served.stderr
    assert "refusing socket directory" in served.stderr and "symbolic link" in served.stderr
    assert list(real.iterdir()) == []  # no lock, no socket made through the link

    (top / "daemon-link").symlink_to(Path(daemon.socket).parent)
    (real / "axchat.sock").symlink_to(daemon.socket)
    for linked in (top / "daemon-link" / Path(daemon.socket).name, real / "axchat.sock"):
        asked = ask_at(str(linked))
        assert asked.returncode != 0 and asked.stdout == "", asked.stderr
        assert asked.stderr.count("\n") == 1 and "symbolic link" in asked.stderr, asked.stderr
