"""A bridge without API keys serves only its own Unix user. It listens on loopback, but
loopback admits every account on the machine (the socket directory's 0700 rule does not
reach TCP), so each request's connection is looked up in the kernel for the user owning
the client's end, as identd does: by its four-tuple (`sock_diag.py`), else in the
socket tables (`/proc/net/tcp`, `/proc/net/tcp6`). A browser, `curl` or the `openai`
client run by that user pass unchanged; anyone else gets 403, and so does a connection
that cannot be found (it fails closed).
`/health` stays open for liveness checks."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from axchat.frontends.web import sock_diag
from axchat.frontends.web.auth import CREDENTIAL, LOCAL
from axchat.frontends.web.openai_errors import ApiError

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def _address(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """`0100007F:1F90` (the table's hex, each 32-bit word in host order) as (ip, port)."""
    hex_ip, hex_port = field.split(":")
    raw = bytes.fromhex(hex_ip)
    # Each 4-byte word is stored little-endian on the machines this runs on.
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return _unmapped(ipaddress.ip_address(ordered)), int(hex_port, 16)


def _normal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return _unmapped(ipaddress.ip_address(host.split("%", 1)[0]))


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`::ffff:127.0.0.1` as 127.0.0.1: a dual-stack socket names an IPv4 peer that way."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def socket_owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket at `client` connected to `server`, or None."""
    want_local, want_remote = (_normal(client[0]), client[1]), (_normal(server[0]), server[1])
    if sock_diag.available():
        return sock_diag.tcp_owner(want_local, want_remote)
    return table_owner(want_local, want_remote)


def table_owner(
    want_local: tuple[sock_diag.Address, int],
    want_remote: tuple[sock_diag.Address, int],
    tables: tuple[Path, ...] = TABLES,
) -> int | None:
    """`socket_owner` from the socket tables, which the kernel fills by walking its whole
    socket hash: for a kernel that cannot be asked for one socket."""
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and _address(fields[1]) == want_local and _address(fields[2]) == want_remote:
                return int(fields[7])
    return None


def own_user_middleware() -> Middleware:
    me = os.getuid()

    @web.middleware
    async def only_me(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/health":
            transport = request.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            here = transport.get_extra_info("sockname") if transport is not None else None
            owner = None
            if isinstance(peer, tuple) and isinstance(here, tuple):  # TCP, IPv4 or IPv6
                owner = socket_owner((peer[0], peer[1]), (here[0], here[1]))
            if owner != me:
                raise ApiError(
                    403,
                    "this bridge has no API key, so it serves only the Unix user it runs as; "
                    "to serve others, start it with --api-key-file FILE",
                    code="forbidden",
                )
        request[CREDENTIAL] = LOCAL
        return await handler(request)

    return only_me
