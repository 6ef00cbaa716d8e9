"""The DEALER socket every client of the daemon opens, blocking or asyncio: its CURVE
keys, trust check and drop monitor, the request frames it sends, and the errors a
frontend handles. Imports only pyzmq, msgspec and the protocol, so `axchat ask` still
starts in milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from axchat import curve_keys
from axchat import endpoint as ep
from axchat.protocol import v1
from axchat.sizes import human_bytes

HOW_TO_START = "start one with `axchat serve` (or `make run` in a checkout)"


class DaemonUnavailable(Exception):
    """No daemon answered; the message says where we looked and how to start one."""


class KeysRefused(DaemonUnavailable):
    """A tcp:// daemon turned down this client's CURVE handshake, or the client's own key
    files are unusable. The message names the likely cause; trying again will not help."""


class UntrustedSocket(DaemonUnavailable):
    """The socket's directory could be another user's: nothing is sent there, and no
    daemon is started there."""


class RequestFailed(Exception):
    def __init__(self, error: v1.Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


def request_frames(request_id: str, body: v1.ClientMessage, max_frame_bytes: int | None) -> list[bytes]:
    """The two frames of a request, refused here when one is over the daemon's
    `max_frame_bytes` (from `welcome`; None before it): the daemon would refuse it
    anyway, and one far over the limit makes ZeroMQ drop the whole connection, taking
    every other request on it along (all the users of a web bridge)."""
    frames = v1.encode(v1.Envelope(id=request_id), body)
    size = max(len(frame) for frame in frames)
    if max_frame_bytes is not None and size > max_frame_bytes:
        text = (
            f"the request is {human_bytes(size)} ({size} bytes); the daemon accepts at most "
            f"{human_bytes(max_frame_bytes)} ({max_frame_bytes} bytes): a shorter prompt or history fits"
        )
        raise RequestFailed(v1.Error(code="frame_too_large", message=text))
    return frames


class DaemonRestarted(RequestFailed):
    """The connection dropped while a request was in flight: its answer will never come."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(
            v1.Error(
                code="daemon_restarted",
                message=f"the connection to the axchat daemon at {ep.describe(endpoint)} dropped mid-request "
                "(the daemon stopped or was restarted)",
            )
        )


def not_answering(endpoint: str, timeout_s: float) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"the axchat daemon at {ep.describe(endpoint)} did not answer within {timeout_s:g}s; "
        f"is it running? {HOW_TO_START}"
    )


def secure(sock: zmq.Socket, endpoint: str) -> curve_keys.ClientKeys | None:  # type: ignore[type-arg]
    """CURVE keys on a client socket that will connect to `endpoint`."""
    try:
        return curve_keys.secure_client_socket(sock, endpoint)
    except curve_keys.KeysError as exc:
        raise KeysRefused(str(exc)) from None


@dataclass
class DaemonSocket:
    """A DEALER socket towards the daemon and the monitor that watches its connection.

    The daemon sends nothing while a request waits (queued, or a long prefill), so
    silence proves nothing: the monitor says when the connection drops, or when a
    tcp:// daemon refused our keys."""

    endpoint: str
    sock: Any  # zmq.Socket or zmq.asyncio.Socket, as the context made it
    monitor: Any
    keys: curve_keys.ClientKeys | None
    # Why our own keys are unusable (the socket then carries no CURVE keys).
    keys_refused: str | None
    # Why the socket's directory is not trusted; then it is never connected.
    untrusted: str | None

    def check_trusted(self) -> None:
        if self.untrusted is not None:
            raise UntrustedSocket(self.untrusted)

    def check_reachable(self) -> None:
        """Fail at once where waiting could not help: an untrusted directory, or no
        socket file where an ipc:// daemon would be."""
        self.check_trusted()
        path = ep.ipc_path(self.endpoint)
        if path is not None and not path.exists():
            raise DaemonUnavailable(f"no axchat daemon is running at {path}; {HOW_TO_START}")

    def refusal(self, event: Mapping[str, Any]) -> str | None:
        """Why a monitor event means the daemon refused our keys; None when it does not."""
        return curve_keys.refusal(event["event"], event["value"], self.endpoint, self.keys)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


def open_daemon_socket(ctx: Any, endpoint: str, *, name: str, keys_refused_raises: bool) -> DaemonSocket:
    """A DEALER socket on `ctx` (sync or asyncio) with CURVE keys and a drop monitor,
    connected to `endpoint` unless its directory is untrusted. Unusable keys raise
    `KeysRefused` when `keys_refused_raises`; else they are noted in `keys_refused`
    for the caller to fail each request with, and the socket is never connected."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    keys_refused = None
    try:
        keys = secure(sock, endpoint)
    except KeysRefused as exc:
        if keys_refused_raises:
            sock.close(linger=0)
            raise
        keys, keys_refused = None, str(exc)
    # A unique inproc name: pyzmq's default derives it from the fd, which a closed
    # and reopened client can reuse while the old name is still being released.
    monitor_addr = f"inproc://axchat-{name}-monitor-{uuid.uuid4().hex}"
    sock.monitor(monitor_addr, zmq.EVENT_DISCONNECTED | curve_keys.HANDSHAKE_EVENTS)
    monitor = ctx.socket(zmq.PAIR)
    monitor.setsockopt(zmq.LINGER, 0)
    monitor.connect(monitor_addr)
    # Checked before connecting: the first frame already carries a prompt. Refused keys
    # (no server key for another host, say) mean no connection either: a plain one
    # would already tell that host who is calling.
    untrusted = ep.untrusted_reason(endpoint)
    if untrusted is None and keys_refused is None:
        sock.connect(endpoint)
    return DaemonSocket(endpoint, sock, monitor, keys, keys_refused, untrusted)
