"""Which addresses the bridge may listen on without an API key: loopback only, because
the API spends the daemon's device for anyone who can reach it."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback one. An empty host or a
    wildcard (0.0.0.0, ::) listens everywhere and is not."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass  # a name: judge what it resolves to
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
