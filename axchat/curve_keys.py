"""CURVE keys for `tcp://` daemons: where the key files live, reading them with their
permissions checked, setting them on a client socket, and naming why a handshake failed.

Shared by every client and by `axchat keys`; imports only the standard library and
pyzmq (its `zmq.auth` certificate reader only once a key file is actually read), so
`axchat ask` on a local socket pays nothing for it.

Layout of a keys directory (`$AXCHAT_KEYS_DIR`, else `$XDG_CONFIG_HOME/axchat/keys`):
`server.key` / `server.key_secret` (the daemon's pair; a client machine holds only the
public `server.key`, copied from the daemon's host), `client.key` / `client.key_secret`
(this user's pair as a client) and `allowed_clients/*.key` (the daemon's allow-list).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import zmq

from axchat.endpoint import is_loopback

ENV_KEYS_DIR = "AXCHAT_KEYS_DIR"
ENV_SERVER_KEY = "AXCHAT_SERVER_KEY"
ENV_CLIENT_KEY = "AXCHAT_CLIENT_KEY"
SERVER = "server"
CLIENT = "client"
ALLOWED_CLIENTS = "allowed_clients"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
# `--server-key none`: connect without CURVE even when a key file is there (a loopback
# daemon started with --insecure-tcp).
NO_KEY = "none"
Z85_KEY_LEN = 40
Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")

# What a client's socket monitor must watch, besides drops, to tell a refused handshake
# from a daemon that is merely slow: CURVE failures send nothing a request could see.
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
ZAP_DENIED = 400  # the ZAP status our authenticator answers for a key not on the allow-list


class KeysError(Exception):
    """A key file or setting is missing, malformed or readable by others; one line says which."""


class ClientKeys(NamedTuple):  # not a dataclass: that costs `axchat ask` milliseconds at import
    server_public: bytes  # Z85
    public: bytes
    secret: bytes
    server_source: str  # where each came from, for error messages
    client_source: str


def keys_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    named = env.get(ENV_KEYS_DIR)
    if named:
        return Path(named).expanduser()
    xdg = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or "/nonexistent") / ".config")
    return Path(xdg) / "axchat" / "keys"


def is_network(endpoint: str) -> bool:
    """A transport other hosts can reach, so one that needs CURVE (ipc relies on its directory)."""
    return not endpoint.startswith(("ipc://", "inproc://"))


def check_private(path: Path) -> None:
    """A secret key file must be ours and closed to everyone else, as ssh insists."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise KeysError(f"cannot read key file {path}: {exc.strerror}") from None
    if info.st_uid != os.getuid():
        raise KeysError(f"refusing key file {path}: owned by uid {info.st_uid}, not {os.getuid()}")
    if info.st_mode & 0o077:
        raise KeysError(
            f"refusing key file {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it; chmod 600 it"
        )


def _load(path: Path) -> tuple[bytes, bytes | None]:
    from zmq.auth.certs import load_certificate

    try:
        public, secret = load_certificate(path)
    except OSError:
        raise KeysError(f"key file {path} does not exist") from None
    except ValueError:
        raise KeysError(f"{path} is not a ZeroMQ certificate (no public-key line)") from None
    if len(public) != Z85_KEY_LEN or (secret is not None and len(secret) != Z85_KEY_LEN):
        raise KeysError(f"{path} holds a malformed key (expected {Z85_KEY_LEN} Z85 characters)")
    return public, secret


def read_public(spec: str) -> bytes:
    """A public key given as its 40 Z85 characters or as a certificate file."""
    if Z85_KEY.fullmatch(spec) and not os.path.exists(spec):
        return spec.encode("ascii")
    return _load(Path(spec).expanduser())[0]


def read_key_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a secret certificate (`*.key_secret`), permissions checked."""
    check_private(path)
    public, secret = _load(path)
    if secret is None:
        raise KeysError(f"{path} holds no secret key; give the `{SECRET_SUFFIX}` file of the pair")
    return public, secret


def client_keys(endpoint: str, environ: Mapping[str, str] | None = None) -> ClientKeys | None:
    """The keys a client uses for `endpoint`: None for a local socket, for `--server-key
    none`, or when no server key is known for a loopback address (then the client speaks
    plain, which only an --insecure-tcp daemon takes). With no key for another host it
    raises: plain text there would cross the network unencrypted, to whoever answers.
    Flags reach here through the environment (`use_key_flags`)."""
    if not is_network(endpoint):
        return None
    env = os.environ if environ is None else environ
    where = keys_dir(env)
    server_spec = env.get(ENV_SERVER_KEY) or ""
    if server_spec.lower() == NO_KEY:
        return None
    if not server_spec:
        default = where / (SERVER + PUBLIC_SUFFIX)
        if not default.exists():
            if not is_loopback(endpoint):
                raise KeysError(no_server_key(endpoint, default))
            return None
        server_spec = str(default)
    server_public = read_public(server_spec)
    client_file = Path(env.get(ENV_CLIENT_KEY) or where / (CLIENT + SECRET_SUFFIX)).expanduser()
    if not client_file.exists():
        raise KeysError(
            f"this client knows the daemon's key ({server_spec}) but has no key pair of its own at {client_file}: "
            "make one with `axchat keys client` and add its public key to the daemon's allow-list"
        )
    public, secret = read_key_pair(client_file)
    return ClientKeys(server_public, public, secret, server_spec, str(client_file))


def no_server_key(endpoint: str, default: Path) -> str:
    return (
        f"refusing to talk to {endpoint} unencrypted: no server key for it; copy the daemon's "
        f"{SERVER}{PUBLIC_SUFFIX} (made by `axchat keys server` on its host) to {default} or pass --server-key "
        f"FILE, or pass --server-key {NO_KEY} to send in plain text anyway"
    )


def secure_client_socket(sock: zmq.Socket, endpoint: str) -> ClientKeys | None:  # type: ignore[type-arg]
    """Set CURVE on a client socket before it connects, when `endpoint` calls for it.
    The one place both clients do this. Raises KeysError for unusable key files."""
    keys = client_keys(endpoint)
    if keys is not None:
        use_keys(sock, keys)
    return keys


def use_keys(sock: zmq.Socket, keys: ClientKeys) -> None:  # type: ignore[type-arg]
    """Make a socket that has not connected yet a CURVE client with `keys`."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


def refusal(event: int, value: int, endpoint: str, keys: ClientKeys | None) -> str | None:
    """One line naming the likely cause of a failed handshake, or None for other events.
    ZeroMQ does not retry a refused handshake, so the client should stop waiting at once."""
    if not is_network(endpoint):
        return None  # ipc speaks no CURVE: its failures are a drop like any other
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == ZAP_DENIED and keys is not None:
            return (
                f"the daemon at {endpoint} refused this client's key {keys.public.decode()} ({keys.client_source}): "
                f"it is not on the daemon's allow-list; on the daemon's host run `axchat keys allow` with this "
                f"client's {CLIENT}{PUBLIC_SUFFIX}"
            )
        return f"the daemon at {endpoint} refused this client's credentials (authentication status {value})"
    if event not in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
        return None
    if keys is None:
        # A CURVE daemon drops a plain peer; which event we see depends on timing.
        return (
            f"the daemon at {endpoint} requires CURVE keys and this client has none: copy the daemon's "
            f"{SERVER}{PUBLIC_SUFFIX} to {keys_dir() / (SERVER + PUBLIC_SUFFIX)} (or pass --server-key), and "
            "make a client key pair with `axchat keys client`"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return (
            f"the daemon at {endpoint} does not use CURVE (started with --insecure-tcp?) but this client offered "
            f"keys; pass --server-key {NO_KEY} to connect without them"
        )
    # A CURVE server that cannot decrypt our hello just drops the connection.
    return (
        f"the daemon at {endpoint} dropped the CURVE handshake: the server key this client uses "
        f"({keys.server_source}) is probably not that daemon's key"
    )


def add_key_flags(parser: object) -> None:
    """`--server-key`, `--client-key` and `--keys-dir` for a client command."""
    add = parser.add_argument  # type: ignore[attr-defined]
    add(
        "--server-key",
        help=f"tcp:// daemons: the daemon's public key, a {PUBLIC_SUFFIX} file or its 40 characters; {NO_KEY}: "
        f"connect without CURVE (default: ${ENV_SERVER_KEY}, else {SERVER}{PUBLIC_SUFFIX} in the keys directory)",
    )
    add(
        "--client-key",
        help=f"tcp:// daemons: this client's {SECRET_SUFFIX} file (default: ${ENV_CLIENT_KEY}, else "
        f"{CLIENT}{SECRET_SUFFIX} in the keys directory)",
    )
    add("--keys-dir", help=f"directory of CURVE keys (default: ${ENV_KEYS_DIR}, else $XDG_CONFIG_HOME/axchat/keys)")


def use_key_flags(args: object) -> None:
    """Flags win over the environment: they are its command-line spelling, so every
    client a frontend makes (and every reconnect) reads them alike."""
    for flag, env in (("server_key", ENV_SERVER_KEY), ("client_key", ENV_CLIENT_KEY), ("keys_dir", ENV_KEYS_DIR)):
        value = getattr(args, flag, None)
        if value:
            os.environ[env] = value
