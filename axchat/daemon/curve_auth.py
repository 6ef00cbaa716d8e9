"""Who may use a `tcp://` socket: the daemon's CURVE key pair, the allow-list of client
keys checked on every handshake and every request, and the rule that refuses an
unauthenticated tcp bind unless it is marked insecure and on loopback."""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import zmq.asyncio

from axchat import curve_keys
from axchat.daemon.config import ServeConfig
from axchat.endpoint import is_loopback
from axchat.zmq_sockets import ZAP_DOMAIN

log = logging.getLogger(__name__)

# A refused key gets at most one log line per this many seconds.
REFUSAL_LOG_WINDOW_S = 60.0
# Keys whose refusals are being held back at once; past it, new keys are counted, not logged.
REFUSAL_LOG_MAX_KEYS = 256
# How long after a change the allow-list is read again at every question, for file
# systems whose mtimes are that coarse.
MTIME_SETTLE_S = 2.0


class ListenRefused(Exception):
    """The socket settings would expose the daemon without authentication; one line says how to fix it."""


@dataclass(frozen=True)
class ServerKeys:
    public: bytes  # Z85
    secret: bytes
    allow_dir: Path


def listen_security(cfg: ServeConfig, endpoint: str) -> ServerKeys | None:
    """The keys the daemon's socket must use, or None where it needs none (ipc, or an
    explicitly insecure loopback tcp socket). Raises ListenRefused otherwise."""
    if not curve_keys.is_network(endpoint):
        return None
    if cfg.insecure_tcp:
        if not is_loopback(endpoint):
            raise ListenRefused(
                f"refusing --insecure-tcp on {endpoint}: without keys only a loopback address "
                "(127.0.0.1, ::1, localhost) is allowed"
            )
        log.warning("serving %s without CURVE: any local user can connect (--insecure-tcp)", endpoint)
        return None
    where = Path(cfg.keys_dir).expanduser() if cfg.keys_dir else curve_keys.keys_dir()
    secret_file = where / (curve_keys.SERVER + curve_keys.SECRET_SUFFIX)
    if not secret_file.exists():
        raise ListenRefused(
            f"refusing to serve {endpoint} without CURVE keys: no {secret_file}; create them with "
            "`axchat keys server` (or, on loopback only, pass --insecure-tcp)"
        )
    try:
        public, secret = curve_keys.read_key_pair(secret_file)
        allow_dir = where / curve_keys.ALLOWED_CLIENTS
        check_allow_dir(allow_dir)
    except curve_keys.KeysError as exc:
        raise ListenRefused(str(exc)) from None
    return ServerKeys(public, secret, allow_dir)


def check_allow_dir(directory: Path) -> os.stat_result:
    """Whoever can write the allow-list can let themselves in: it must be ours and
    writable by nobody else. Returns its stat, whose mtime says when it last changed."""
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        raise curve_keys.KeysError(
            f"no allow-list directory {directory}: add a client with `axchat keys allow`"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise curve_keys.KeysError(f"{directory} is not a directory")
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise curve_keys.KeysError(
            f"refusing allow-list {directory}: it must be owned by uid {os.getuid()} and writable by nobody else"
        )
    return info


def allowed_keys(directory: Path) -> set[bytes]:
    """The public keys in the allow-list's `*.key` files; unreadable files are skipped with a log line."""
    keys = set()
    for path in sorted(directory.glob("*" + curve_keys.PUBLIC_SUFFIX)):
        try:
            keys.add(curve_keys.read_public(str(path)))
        except curve_keys.KeysError as exc:
            log.warning("allow-list: skipping %s", exc)
    return keys


@dataclass
class _Quiet:
    logged_at: float
    held_back: int = 0


class Held(NamedTuple):
    """Refusals left out of the log since the last line: of this key, and of keys past the cap."""

    same_key: int
    other_keys: int


class RefusalLog:
    """Whether a refusal gets a log line: one per key per window, so a client retrying
    in a loop (or a revoked one still sending) cannot fill the disk; the line then says
    how many were held back. At most `max_keys` keys are tracked, so a stream of made-up
    keys costs bounded memory and at most `max_keys` lines per window."""

    def __init__(self, window_s: float = REFUSAL_LOG_WINDOW_S, max_keys: int = REFUSAL_LOG_MAX_KEYS) -> None:
        self.window_s = window_s
        self._max_keys = max_keys
        self._keys: dict[bytes, _Quiet] = {}
        self._other_keys = 0

    def due(self, key: bytes, now: float) -> Held | None:
        """Log this refusal of `key` at `now` (what was held back), or None to stay quiet."""
        quiet = self._keys.get(key)
        if quiet is not None and now - quiet.logged_at < self.window_s:
            quiet.held_back += 1
            return None
        if quiet is None and len(self._keys) >= self._max_keys:
            self._keys = {k: q for k, q in self._keys.items() if now - q.logged_at < self.window_s}
            if len(self._keys) >= self._max_keys:
                self._other_keys += 1
                return None
        held = Held(quiet.held_back if quiet is not None else 0, self._other_keys)
        self._keys[key] = _Quiet(now)
        self._other_keys = 0
        return held


class AllowList:
    """The allow-list's keys, asked at every handshake (the ZAP handler) and for every
    request (the front door, so a revoked key is cut off on a connection it already
    has). So it is cached: one stat of the directory per question, and a re-read only
    when the directory's mtime moves, which `axchat keys allow` and `revoke` (a file
    added or removed) always do."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.refusals = RefusalLog()
        self._keys: frozenset[bytes] = frozenset()
        self._read_at: tuple[int, int] | None = None  # (inode, mtime ns) of the directory when read
        self._settled = False

    def keys(self) -> frozenset[bytes]:
        """The allowed keys; raises KeysError once the directory is missing or unsafe."""
        info = check_allow_dir(self.directory)
        stamp = (info.st_ino, info.st_mtime_ns)
        if stamp != self._read_at or not self._settled:
            self._keys = frozenset(allowed_keys(self.directory))
            self._read_at = stamp
            # A file system with coarse timestamps (1 s, 2 s) can change the directory
            # again within the same mtime, and a file can be read while still being
            # written: trust the cache only once the directory is older than that.
            self._settled = time.time() - info.st_mtime_ns / 1e9 > MTIME_SETTLE_S
        return self._keys

    def admits(self, client_key: bytes, who: str) -> bool:
        """Whether the Z85 `client_key` is allowed; a refusal is logged (rate-limited)
        naming `who` asked."""
        try:
            allowed = client_key in self.keys()
        except curve_keys.KeysError as exc:
            self._log(str(exc).encode(), "refusing every client: %s%s", exc)
            return False
        except Exception:
            # Deny, and keep the ZAP handler alive: an exception there would end its task,
            # and every later handshake would wait for an answer that never comes.
            log.exception("refused %s: the allow-list check failed", who)
            return False
        if not allowed:
            self._log(client_key, "refused %s whose key %s is not in %s%s", who, client_key.decode(), self.directory)
        return allowed

    def callback(self, domain: str, client_key: bytes) -> bool:
        """The ZAP handler's question, at every handshake."""
        return self.admits(client_key, "a client")

    def _log(self, key: bytes, fmt: str, *args: object) -> None:
        held = self.refusals.due(key, time.monotonic())
        if held is None:
            return
        counts = []
        if held.same_key:
            counts.append(f"{held.same_key} more of this key")
        if held.other_keys:
            counts.append(f"{held.other_keys} of other keys")
        note = f" ({' and '.join(counts)} refused unlogged since its last line)" if counts else ""
        log.warning(fmt, *args, note)


def start_authenticator(ctx: zmq.asyncio.Context, allow_list: AllowList) -> object:
    """Start the ZAP handler on `ctx`. It must run before the socket binds: a CURVE server
    socket enforces its ZAP domain, so until the handler runs nobody gets in."""
    from zmq.auth.asyncio import AsyncioAuthenticator

    auth = AsyncioAuthenticator(ctx, log=logging.getLogger("axchat.daemon.zap"))
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN, allow_list)
    return auth
