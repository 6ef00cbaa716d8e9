"""The uid owning one TCP socket, asked of the kernel by its four-tuple (netlink
`sock_diag`, the interface `ss` uses). The kernel looks the socket up in its hash
table, where reading `/proc/net/tcp` walks every bucket of it: milliseconds of
kernel time a table on an idle machine, paid on each request's way to its first token."""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
ANY_STATE = 0xFFFFFFFF

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_REQUEST = struct.Struct("=BBBBI")  # struct inet_diag_req_v2, up to its socket id
_SOCKID = struct.Struct(">HH16s16s")  # ports and addresses, network order
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie (two words)
# struct inet_diag_msg: family, state, timer, retrans, the 48-byte socket id, then
# expires, rqueue, wqueue, uid, inode.
_UID_AT = 4 + 48 + 12

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _packed(ip: Address) -> bytes:
    return ip.packed.ljust(16, b"\0")


def tcp_owner(local: tuple[Address, int], remote: tuple[Address, int], timeout_s: float = 1.0) -> int | None:
    """The uid owning the TCP socket whose own end is `local` and whose peer is
    `remote`; None when the kernel knows no such socket, or cannot say (`available`)."""
    family = socket.AF_INET if isinstance(local[0], ipaddress.IPv4Address) else socket.AF_INET6
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, ANY_STATE)
    body += _SOCKID.pack(local[1], remote[1], _packed(local[0]), _packed(remote[0]))
    body += _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    message = _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(timeout_s)  # the kernel answers at once; never wait forever
            nl.sendto(message, (0, 0))
            reply = nl.recv(8192)
    except OSError:
        return None
    if len(reply) < _HEADER.size:
        return None
    _, kind, _, _, _ = _HEADER.unpack_from(reply)
    if kind != SOCK_DIAG_BY_FAMILY or len(reply) < _HEADER.size + _UID_AT + 4:
        return None  # NLMSG_ERROR: no such socket, or no handler for the family
    # The lookup falls back to a listener on the local port: only a socket connected
    # to `remote` is the one asked about.
    reply_family = reply[_HEADER.size]
    _, dport, _, dst = _SOCKID.unpack_from(reply, _HEADER.size + 4)
    peer = ipaddress.IPv4Address(dst[:4]) if reply_family == socket.AF_INET else ipaddress.IPv6Address(dst)
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped  # a dual-stack socket's IPv4 peer
    if dport != remote[1] or peer != remote[0]:
        return None
    return int(struct.unpack_from("=I", reply, _HEADER.size + _UID_AT)[0])


@functools.cache
def available() -> bool:
    """Whether this kernel answers `tcp_owner` (a kernel without inet_diag answers
    "no such socket" for every one): asked once, for a connection of our own."""
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=1.0) as client:
                here, there = client.getsockname(), server.getsockname()
                local = (ipaddress.IPv4Address(here[0]), int(here[1]))
                return tcp_owner(local, (ipaddress.IPv4Address(there[0]), int(there[1]))) is not None
    except OSError:  # no loopback IPv4 to try it on: the tables still answer
        return False
