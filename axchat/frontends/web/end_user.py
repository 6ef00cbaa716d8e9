"""Who an HTTP request is for, as the daemon's `generate.user`: the daemon then admits,
queues fairly and isolates the prefix cache per person behind the bridge.

Every name is namespaced by the credential that let the request in (`key:NAME` for an
API key, `local` for the keyless bridge's own user), so an application can only ever
name its own users: claiming `user: "alice"` through another key is another person,
with no share of Alice's cached conversation or her slots.

Within that: the header an authenticating proxy sets (`--trust-user-header`), honoured
only from loopback or a `--trusted-proxy` address (anyone else can send any header);
else the OpenAI body's `user` field; else the connection (on loopback) or the remote
address, so that a caller who names nobody is one user however many requests it sends,
and cannot fill every slot by looking new each time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiohttp import web

from axchat.endpoint import is_loopback_host
from axchat.frontends.web.auth import CREDENTIAL, LOCAL
from axchat.protocol import v1


@dataclass(frozen=True)
class UserTrust:
    header: str | None = None  # `--trust-user-header`
    proxies: frozenset[str] = frozenset()  # `--trusted-proxy` addresses, beside loopback

    def trusts(self, remote: str | None) -> bool:
        if remote is None:
            return False
        return remote in self.proxies or is_loopback_host(remote)


NO_HEADER = UserTrust()  # no proxy header is trusted


def end_user(request: web.Request, body_user: str | None, trust: UserTrust) -> str:
    credential = request.get(CREDENTIAL, LOCAL)
    named = request.headers.get(trust.header, "") if trust.header else ""
    if named and trust.trusts(request.remote):
        return _namespaced(credential, "header", named)
    if body_user:
        return _namespaced(credential, "user", body_user)
    return _namespaced(credential, "anon", _connection(request))


def _connection(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not isinstance(peer, tuple):
        return str(request.remote)
    return f"{peer[0]}:{peer[1]}" if is_loopback_host(peer[0]) else str(peer[0])


def _namespaced(credential: str, source: str, name: str) -> str:
    full = f"{credential}/{source}:{name}"
    if len(full) > v1.MAX_USER_CHARS:
        # Long names are hashed, not refused: the field is an opaque key to the daemon.
        full = f"{credential}/{source}:{hashlib.sha256(name.encode()).hexdigest()[:32]}"
    return full
