"""Where clients look for the daemon: the system service's socket is found by itself
when the user has no daemon of their own."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DaemonProcess

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
