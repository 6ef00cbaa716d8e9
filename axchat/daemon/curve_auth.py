"""Who may use a `tcp://` socket: the daemon's CURVE key pair, the allow-list of client
keys checked on every handshake, and the rule that refuses an unauthenticated tcp bind
unless it is marked insecure and on loopback."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq.asyncio

from axchat import curve_keys
from axchat.daemon.config import ServeConfig
from axchat.frontends.web.bind_policy import is_loopback as host_is_loopback

log = logging.getLogger(__name__)


class ListenRefused(Exception):
    """The socket settings would expose the daemon without authentication; one line says how to fix it."""


@dataclass(frozen=True)
class ServerKeys:
    public: bytes  # Z85
    secret: bytes
    allow_dir: Path


def is_loopback(endpoint: str) -> bool:
    """`tcp://127.0.0.1:N`, `tcp://[::1]:N` or `tcp://localhost:N`; `*` and interface
    names are not. The same judgement as the web bridge's no-API-key rule."""
    if not endpoint.startswith("tcp://"):
        return False
    return host_is_loopback(endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]"))


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


def check_allow_dir(directory: Path) -> None:
    """Whoever can write the allow-list can let themselves in: it must be ours and
    writable by nobody else."""
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


def allowed_keys(directory: Path) -> set[bytes]:
    """The public keys in the allow-list's `*.key` files; unreadable files are skipped with a log line."""
    keys = set()
    for path in sorted(directory.glob("*" + curve_keys.PUBLIC_SUFFIX)):
        try:
            keys.add(curve_keys.read_public(str(path)))
        except curve_keys.KeysError as exc:
            log.warning("allow-list: skipping %s", exc)
    return keys


class AllowList:
    """ZAP credentials provider: reads the allow-list on every handshake, so `axchat keys
    allow` (or removing a file) takes effect without restarting the daemon. Handshakes
    are rare next to requests, and the directory holds a few small files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def callback(self, domain: str, client_key: bytes) -> bool:
        try:
            check_allow_dir(self.directory)
            allowed = client_key in allowed_keys(self.directory)
        except curve_keys.KeysError as exc:
            log.error("refusing every client: %s", exc)
            return False
        except Exception:
            # Deny, and keep the ZAP handler alive: an exception here would end its task,
            # and every later handshake would wait for an answer that never comes.
            log.exception("refused a client: the allow-list check failed")
            return False
        if not allowed:
            log.warning("refused a client whose key %s is not in %s", client_key.decode(), self.directory)
        return allowed


def start_authenticator(ctx: zmq.asyncio.Context, keys: ServerKeys) -> object:
    """Start the ZAP handler on `ctx`. It must run before the socket binds: a CURVE server
    with no ZAP handler lets in every client that knows its public key."""
    from zmq.auth.asyncio import AsyncioAuthenticator

    auth = AsyncioAuthenticator(ctx, log=logging.getLogger("axchat.daemon.zap"))
    auth.start()
    auth.configure_curve_callback("*", AllowList(keys.allow_dir))
    return auth
