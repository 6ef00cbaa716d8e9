"""The socket maker's CURVE server: it lets nobody in unless a ZAP handler answers for
its domain. Real sockets on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from axchat.zmq_sockets import ZAP_DOMAIN, make_socket

HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@pytest.fixture
def contexts() -> Iterator[tuple[zmq.asyncio.Context, zmq.Context]]:  # type: ignore[type-arg]
    server, client = zmq.asyncio.Context(), zmq.Context()
    yield server, client
    client.term()
    server.term()


def test_a_curve_server_lets_nobody_in_while_no_zap_handler_answers(
    contexts: tuple[zmq.asyncio.Context, zmq.Context],  # type: ignore[type-arg]
) -> None:
    server_ctx, client_ctx = contexts
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    router = make_socket(server_ctx, zmq.ROUTER, bind="tcp://127.0.0.1:*", curve_server=(server_public, server_secret))
    dealer = client_ctx.socket(zmq.DEALER)
    monitor = dealer.get_monitor_socket(HANDSHAKE_EVENTS)
    try:
        assert router.getsockopt_string(zmq.ZAP_DOMAIN) == ZAP_DOMAIN
        # A client with the right server key: without an enforced domain libzmq would
        # let it in, with no ZAP handler to ask.
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        dealer.setsockopt(zmq.CURVE_PUBLICKEY, client_public)
        dealer.setsockopt(zmq.CURVE_SECRETKEY, client_secret)
        dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
        assert monitor.poll(30_000), "no handshake event within 30 s"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    finally:
        dealer.disable_monitor()
        monitor.close(linger=0)
        dealer.close(linger=0)
        router.close(linger=0)
