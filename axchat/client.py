"""A blocking client of the daemon for command-line frontends.

Imports only pyzmq, msgspec and the protocol, so a frontend built on it starts in
milliseconds. The socket and its errors are `axchat.daemon_socket`'s, shared with the
asyncio client; connecting, backing off and retrying are `axchat.connection`'s. Every wait has a deadline: a daemon that stops answering shows up as
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

from axchat import daemon_socket
from axchat import endpoint as ep
from axchat.daemon_socket import DaemonRestarted, DaemonUnavailable, KeysRefused, RequestFailed, UntrustedSocket
from axchat.protocol import v1

__all__ = [
    "Client",
    "DaemonRestarted",
    "DaemonUnavailable",
    "GenerateStream",
    "KeysRefused",
    "RequestFailed",
    "UntrustedSocket",
]


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
        self._link = daemon_socket.open_daemon_socket(self._ctx, self.endpoint, name="client", keys_refused_raises=True)
        self._sock, self._monitor = self._link.sock, self._link.monitor
        self._refused: str | None = None  # a tcp:// daemon refused our keys
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = 0
        # Set from `welcome`: how often to ping while waiting, so the daemon knows we live.
        self.heartbeat_s: float | None = None
        self._last_sent = time.monotonic()
        self._max_frame: int | None = None  # the daemon's, from `welcome`

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ requests

    def hello(self) -> v1.Welcome:
        """Handshake; raises DaemonUnavailable when nothing answers in time."""
        self._link.check_reachable()
        reply = self._call(v1.Hello(client=f"axchat-cli/{os.getpid()}"), self.connect_timeout_s)
        assert isinstance(reply, v1.Welcome)
        self._max_frame = reply.max_frame_bytes
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
        self._link.check_trusted()
        if not isinstance(body, (v1.Cancel, v1.Ping)):
            # A drop before this request is not its problem. (A heartbeat ping must not
            # swallow a drop that happened during the request it keeps alive.)
            self._dropped_since_last_send()
        self._sock.send_multipart(daemon_socket.request_frames(request_id, body, self._max_frame))
        self._last_sent = time.monotonic()

    def _dropped_since_last_send(self) -> bool:
        dropped = False
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            dropped = dropped or event["event"] == zmq.EVENT_DISCONNECTED
            why = self._link.refusal(event)
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
                raise daemon_socket.not_answering(self.endpoint, timeout_s)
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
