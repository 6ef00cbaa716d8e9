"""Which requests the front door holds and whether one more may come in: running plus
queued requests in all, per client (or per user behind a connection that names them),
and per connection with all its users together; status requests awaiting their answer
are counted apart, so watching one's own full queue still works. Past a bound the
client hears `busy` at once instead of waiting in an unbounded line. No sockets here:
the front door asks, then answers."""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import Any


@dataclass
class Live:
    identity: bytes
    client_id: str
    kind: str  # "generate" or "status"
    user: str = ""  # generate.user: who behind the connection, for per-user limits


# What admission counts a kind of live request as, in a `busy` refusal.
LIVE_WORDS = {"generate": "requests running or queued", "status": "status requests waiting for an answer"}


def _uncount(counter: collections.Counter[Any], key: object) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class Admission:
    def __init__(self, *, max_live: int, max_per_client: int, max_per_connection: int) -> None:
        self.max_live = max_live
        self.max_per_client = max_per_client
        # A bridge's anonymous callers, or one application's many user names, cannot
        # fill every slot of the daemon.
        self.max_per_connection = max_per_connection
        self._rids = itertools.count(1)
        self.live: dict[int, Live] = {}
        self.by_client: dict[tuple[bytes, str], int] = {}  # (peer, its request id) -> rid, generates
        self._per_client: collections.Counter[tuple[bytes, str, str]] = collections.Counter()  # (peer, user, kind)
        self._per_connection: collections.Counter[tuple[bytes, str]] = collections.Counter()  # (peer, kind)
        self._total: collections.Counter[str] = collections.Counter()  # by kind

    def over_limit(self, identity: bytes, kind: str, user: str) -> str | None:
        """Why one more request of `kind` may not come in, or None."""
        if self._per_client[(identity, user, kind)] >= self.max_per_client:
            who = "this client" if not user else "this user"
            return f"{who} already has {self.max_per_client} {LIVE_WORDS[kind]}"
        if user and self._per_connection[(identity, kind)] >= self.max_per_connection:
            return f"this connection already has {self.max_per_connection} {LIVE_WORDS[kind]}, all its users together"
        if self._total[kind] >= self.max_live:
            return f"the daemon has {self.max_live} {LIVE_WORDS[kind]}"
        return None

    def register(self, identity: bytes, client_id: str, kind: str, user: str = "") -> int:
        rid = next(self._rids)
        self.live[rid] = Live(identity, client_id, kind, user)
        if kind == "generate":
            self.by_client[(identity, client_id)] = rid
        self._per_client[(identity, user, kind)] += 1
        self._per_connection[(identity, kind)] += 1
        self._total[kind] += 1
        return rid

    def forget(self, rid: int) -> Live | None:
        live = self.live.pop(rid, None)
        if live is not None:
            if live.kind == "generate":
                self.by_client.pop((live.identity, live.client_id), None)
            _uncount(self._per_client, (live.identity, live.user, live.kind))
            _uncount(self._per_connection, (live.identity, live.kind))
            self._total[live.kind] -= 1
        return live

    def of_peer(self, identity: bytes) -> list[int]:
        return [rid for rid, live in self.live.items() if live.identity == identity]
