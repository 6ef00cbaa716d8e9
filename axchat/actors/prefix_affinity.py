"""Which device holds a conversation's cached prefix: fingerprints of a prompt's token
blocks, each naming the device that last served a prompt starting with them.

A chat's next turn is the last turn's prompt with the reply and a new message after it,
so its leading blocks are the last prompt's: the longest fingerprint it shares names the
device whose prefix cache (or, on a card, whose memory of the turn) it should go back to.
Keys carry the client (the prefix cache's privacy salt): one client's prompt never
points another's at a device.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from axchat.actors.messages import connection_of

# Tokens per fingerprinted block: fine enough that a short chat turn has one, coarse
# enough that a long prompt costs a few hundred dictionary entries, not thousands.
BLOCK_TOKENS = 16
# Fingerprints kept, all clients together; the least recently used go first.
MAX_ENTRIES = 200_000


def block_fingerprints(token_ids: Sequence[int]) -> list[int]:
    """One fingerprint per whole block, each covering every token before its block's end
    (chained), so equal fingerprints mean equal prefixes (within this process)."""
    chained = 0
    out = []
    for end in range(BLOCK_TOKENS, len(token_ids) + 1, BLOCK_TOKENS):
        chained = hash((chained, tuple(token_ids[end - BLOCK_TOKENS : end])))
        out.append(chained)
    return out


class PrefixAffinity:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._where: collections.OrderedDict[tuple[str, int], str] = collections.OrderedDict()
        self._by_connection: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._where)

    def find(self, client: str, fingerprints: list[int]) -> str | None:
        """The device that served the longest of these prefixes for this client."""
        for fingerprint in reversed(fingerprints):
            device = self._where.get((client, fingerprint))
            if device is not None:
                self._where.move_to_end((client, fingerprint))
                return device
        return None

    def record(self, client: str, fingerprints: list[int], device: str) -> None:
        """`device` now holds these prefixes of `client`'s (a turn ended there)."""
        keys = self._by_connection[connection_of(client)]
        for fingerprint in fingerprints:
            key = (client, fingerprint)
            self._where[key] = device
            self._where.move_to_end(key)
            keys.add(key)
        while len(self._where) > self._max_entries:
            key, _ = self._where.popitem(last=False)
            self._by_connection.get(connection_of(key[0]), set()).discard(key)

    def forget_connection(self, connection: str) -> None:
        """A connection is gone: its prefixes can never be reused anywhere."""
        for key in self._by_connection.pop(connection, set()):
            self._where.pop(key, None)

    def forget_device(self, device: str) -> None:
        """A device is out of placement: nothing points at it any more."""
        for key in [k for k, d in self._where.items() if d == device]:
            del self._where[key]
