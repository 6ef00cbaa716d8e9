"""A blocking client of the daemon for command-line frontends.

Imports only pyzmq, msgspec and the protocol, so a frontend built on it starts in
milliseconds. Every wait has a deadline: a daemon that stops answering shows up as
`DaemonUnavailable`, never as a hang.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from axchat import curve_keys
from axchat import endpoint as ep
from axchat.protocol import v1

HOW_TO_START = "start one with `axchat serve` (or `make run` in a checkout)"


class DaemonUnavailable(Exception):
    """No daemon answered; the message says where we looked and how to start one."""


class KeysRefused(DaemonUnavailable):
    """A tcp:// daemon turned down this client's CURVE handshake, or the client's own key
    files are unusable. The message names the likely cause; trying again will not help."""


def secure(sock: zmq.Socket, endpoint: str) -> curve_keys.ClientKeys | None:  # type: ignore[type-arg]
    """CURVE keys on a client socket that will connect to `endpoint` (both clients' way)."""
    try:
        return curve_keys.secure_client_socket(sock, endpoint)
    except curve_keys.KeysError as exc:
        raise KeysRefused(str(exc)) from None
class UntrustedSocket(DaemonUnavailable):
    """The socket's directory could be another user's: nothing is sent there, and no
    daemon is started there."""


class RequestFailed(Exception):
    def __init__(self, error: v1.Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


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


@dataclass
class GenerateStream:
    """Events of one generate, in order; ends after `done` or `error`."""

    client: Client
    request_id: str
    stall_timeout_s: float

    def __iter__(self) -> Iterator[v1.DaemonMessage]:
        while True:
            body = self.client._recv_for(self.request_id, self.stall_timeout_s)
            yield body
            if isinstance(body, v1.TERMINAL):
                return

    def cancel(self) -> None:
        self.client._send(self.request_id, v1.Cancel())


class Client:
    def __init__(self, socket: str | None = None, *, connect_timeout_s: float = 3.0) -> None:
        self.endpoint = ep.client_endpoint(socket)
        self.connect_timeout_s = connect_timeout_s
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._keys = secure(self._sock, self.endpoint)
        except KeysRefused:
            self._sock.close(linger=0)
            raise
        self._refused: str | None = None
        # The daemon sends nothing while a request waits (queued, or a long prefill), so
        # silence proves nothing: the socket monitor says when the connection drops
        # (or when a tcp:// daemon refused our keys).
        # A unique inproc name: pyzmq's default derives it from the fd, which a closed
        # and reopened client can reuse while the old name is still being released.
        monitor_addr = f"inproc://axchat-client-monitor-{uuid.uuid4().hex}"
        self._sock.monitor(monitor_addr, zmq.EVENT_DISCONNECTED | curve_keys.HANDSHAKE_EVENTS)
        self._monitor = self._ctx.socket(zmq.PAIR)
        self._monitor.setsockopt(zmq.LINGER, 0)
        self._monitor.connect(monitor_addr)
        # Checked before connecting: the first frame already carries a prompt.
        self._refusal = ep.untrusted_reason(self.endpoint)
        if self._refusal is None:
            self._sock.connect(self.endpoint)
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = 0
        # Set from `welcome`: how often to ping while waiting, so the daemon knows we live.
        self.heartbeat_s: float | None = None
        self._last_sent = time.monotonic()

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ requests

    def hello(self) -> v1.Welcome:
        """Handshake; raises DaemonUnavailable when nothing answers in time."""
        if self._refusal is not None:
            raise UntrustedSocket(self._refusal)
        path = ep.ipc_path(self.endpoint)
        if path is not None and not path.exists():
            raise DaemonUnavailable(f"no axchat daemon is running at {path}; {HOW_TO_START}")
        reply = self._call(v1.Hello(client=f"axchat-cli/{os.getpid()}"), self.connect_timeout_s)
        assert isinstance(reply, v1.Welcome)
        if reply.client_timeout_s > 0:
            self.heartbeat_s = reply.client_timeout_s / 3
        return reply

    def status(self) -> v1.StatusReply:
        reply = self._call(v1.Status(), self.connect_timeout_s)
        assert isinstance(reply, v1.StatusReply)
        return reply

    def generate(self, request: v1.Generate, *, stall_timeout_s: float = 300.0) -> GenerateStream:
        rid = self._next_id()
        self._send(rid, request)
        return GenerateStream(self, rid, stall_timeout_s)

    # ------------------------------------------------------------ plumbing

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}-{self._counter}"

    def _send(self, request_id: str, body: v1.ClientMessage) -> None:
        if self._refusal is not None:
            raise UntrustedSocket(self._refusal)
        if not isinstance(body, (v1.Cancel, v1.Ping)):
            # A drop before this request is not its problem. (A heartbeat ping must not
            # swallow a drop that happened during the request it keeps alive.)
            self._dropped_since_last_send()
        self._sock.send_multipart(v1.encode(v1.Envelope(id=request_id), body))
        self._last_sent = time.monotonic()

    def _dropped_since_last_send(self) -> bool:
        dropped = False
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            dropped = dropped or event["event"] == zmq.EVENT_DISCONNECTED
            why = curve_keys.refusal(event["event"], event["value"], self.endpoint, self._keys)
            self._refused = self._refused or why  # the first cause stands
        return dropped

    def _call(self, body: v1.ClientMessage, timeout_s: float) -> v1.DaemonMessage:
        rid = self._next_id()
        self._send(rid, body)
        reply = self._recv_for(rid, timeout_s)
        if isinstance(reply, v1.Error):
            raise RequestFailed(reply)
        return reply

    def _recv_for(self, request_id: str, timeout_s: float) -> v1.DaemonMessage:
        """Next frame for `request_id`; frames for earlier, abandoned ids are skipped."""
        deadline = time.monotonic() + timeout_s
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            if self._refused is not None:
                raise KeysRefused(self._refused)
            left = deadline - time.monotonic()
            if left <= 0:
                raise DaemonUnavailable(
                    f"the axchat daemon at {ep.describe(self.endpoint)} did not answer within {timeout_s:g}s; "
                    f"is it running? {HOW_TO_START}"
                )
            wait = left
            if self.heartbeat_s is not None:
                # The daemon hears only what we send, not what we read: ping on a
                # schedule even while frames keep coming. Its pong is skipped below.
                due = self._last_sent + self.heartbeat_s - time.monotonic()
                if due <= 0:
                    self._send(self._next_id(), v1.Ping())
                    continue
                wait = min(left, due)
            ready = dict(poller.poll(max(1, int(wait * 1000))))
            if self._sock not in ready:
                # Frames already received still count; only a drop with nothing to read ends it.
                if self._monitor in ready and self._dropped_since_last_send() and self._refused is None:
                    raise DaemonRestarted(self.endpoint)
                continue
            env_raw, body_raw = self._sock.recv_multipart()
            env = v1.decode_envelope(env_raw)
            try:
                body = v1.decode_daemon_body(body_raw)
            except msgspec.ValidationError:
                continue  # a message type from a newer minor version: not for us

            if env.id == request_id:
                return body
            if env.id == "" and isinstance(body, v1.Error):
                raise RequestFailed(body)


def connect(socket: str | None = None, *, wait_s: float = 0.0, connect_timeout_s: float = 3.0) -> Client:
    """A client that has had its `welcome`. With `wait_s`, keeps trying that long for a
    daemon that is (re)starting, backing off to a second between tries."""
    deadline = time.monotonic() + wait_s
    pause = 0.05
    client = Client(socket, connect_timeout_s=connect_timeout_s)
    try:
        while True:
            try:
                client.hello()
                return client
            except KeysRefused:
                raise
            except (DaemonUnavailable, DaemonRestarted):
                # One socket throughout: ZeroMQ reconnects it by itself once a daemon binds.
                if time.monotonic() + pause >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
    except BaseException:
        client.close()
        raise
