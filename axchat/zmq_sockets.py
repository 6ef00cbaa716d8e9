"""The one place that makes ZeroMQ sockets, so linger, limits and cleanup are set alike.

Below both the actors (their inproc links) and the daemon (its front door): neither
layer owns it, so neither depends on the other for it."""

from __future__ import annotations

import zmq
import zmq.asyncio

# Unsent frames are worthless once we decided to close: never let a peer that is gone
# keep the context from terminating.
LINGER_MS = 0
# The ZAP domain of a CURVE server socket; the daemon's handler answers for it alone.
ZAP_DOMAIN = "axchat"


def make_socket(
    ctx: zmq.asyncio.Context,
    kind: int,
    *,
    bind: str | None = None,
    connect: str | None = None,
    hwm: int = 0,
    max_msg_bytes: int = -1,
    router_mandatory: bool = False,
    curve_server: tuple[bytes, bytes] | None = None,
) -> zmq.asyncio.Socket:
    """A socket with the project's defaults. `hwm=0` means unbounded: the inproc
    links between actors carry at most what admission already bounded, and a full
    pipe there would deadlock the device/sampler round trip. `curve_server` (public,
    secret) makes it a CURVE server: set before binding, so no plain peer ever gets in,
    and with its ZAP domain enforced, so no peer gets in unless a ZAP handler says yes
    (without it, libzmq lets in anyone who knows the server key when no handler runs)."""
    sock = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        if max_msg_bytes >= 0:
            sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
        if router_mandatory:
            # Sending to a peer that disconnected raises instead of dropping silently:
            # that is how the daemon learns a client vanished mid-stream.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if curve_server is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve_server[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve_server[1])
            sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        if bind is not None:
            sock.bind(bind)
        if connect is not None:
            sock.connect(connect)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock
