"""Where the daemon listens: socket path resolution, the private runtime directory, and
which addresses are loopback (for the rules that allow no authentication there).

Shared by the daemon and every frontend, so it imports only the standard library.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from pathlib import Path

ENV_SOCKET = "AXCHAT_SOCKET"
SOCKET_NAME = "axchat.sock"
# The system unit's socket (`RuntimeDirectory=axchat`), for members of its group.
SYSTEM_SOCKET = "/run/axchat/axchat.sock"


class EndpointError(Exception):
    """The socket location is unusable; the message says why, in one line."""


def default_socket() -> str:
    """`$AXCHAT_SOCKET`, else `$XDG_RUNTIME_DIR/axchat/axchat.sock`, else a private
    per-user directory under /tmp."""
    env = os.environ.get(ENV_SOCKET)
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "axchat" if runtime else Path("/tmp") / f"axchat-{os.getuid()}"
    return str(base / SOCKET_NAME)


def to_zmq(socket: str | None) -> str:
    """A ZeroMQ endpoint for a path or endpoint; None means the default."""
    socket = socket or default_socket()
    if "://" in socket:
        return socket
    return "ipc://" + os.path.abspath(os.path.expanduser(socket))


def client_endpoint(socket: str | None) -> str:
    """Where a client looks: as `to_zmq`, except that when nothing was chosen (no
    `--socket`, no `$AXCHAT_SOCKET`) and there is no per-user daemon socket, the system
    service's socket if this user can see it (a member of its group). The daemon never
    uses this: it listens where it is told."""
    if socket or os.environ.get(ENV_SOCKET):
        return to_zmq(socket)
    own = to_zmq(None)
    path = ipc_path(own)
    # os.path.exists, not Path.exists: a directory we may not enter is "not there".
    if path is not None and not os.path.exists(path) and os.path.exists(SYSTEM_SOCKET):
        return to_zmq(SYSTEM_SOCKET)
    return own


def untrusted_reason(endpoint: str) -> str | None:
    """Why a client must not talk to the socket at `endpoint`, or None when it may.

    Whoever can write the socket's directory can put their own listener there and read
    every prompt sent to it, so a client trusts only a directory that nobody but its
    owner may write, owned by this user or root, or made by root for a service (its
    parent is root's and closed to others, as /run is for `/run/axchat`). A directory
    that does not exist yet is judged when it does: there is nothing to connect to.
    """
    path = ipc_path(endpoint)
    if path is None:
        return None  # tcp://: the user named a network address on purpose
    directory = path.parent
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check socket directory {directory}: {exc.strerror}"
    link = _symlink_reason(directory, info, "socket directory") or _socket_symlink_reason(path)
    if link is not None:
        return link
    if info.st_mode & 0o022:
        return (
            f"refusing socket directory {directory}: mode {stat.S_IMODE(info.st_mode):04o} lets other users "
            "replace the socket; it must be writable by its owner only"
        )
    if info.st_uid in (os.getuid(), 0) or _made_by_root(directory.parent):
        return None
    return (
        f"refusing socket directory {directory}: owned by uid {info.st_uid}, not by you ({os.getuid()}) or root; "
        "another user could be listening there"
    )


def _symlink_reason(path: Path, info: os.stat_result, what: str) -> str | None:
    # The checks here judge the link, not what it points to, and whoever can write the
    # link's directory can point it elsewhere after they pass: a link is never followed.
    if not stat.S_ISLNK(info.st_mode):
        return None
    return f"refusing {what} {path}: it is a symbolic link; name the real path"


def _socket_symlink_reason(path: Path) -> str | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None  # nothing there yet, or nothing to connect to: the connect says so
    return _symlink_reason(path, info, "socket")


def socket_file_exists(path: Path) -> bool:
    """Whether a socket file is at `path` (False when nothing is). Anything else there
    raises EndpointError: a symbolic link, a regular file or a directory is not a
    daemon's leftover, and removing it could delete what the path was pointed at."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISSOCK(info.st_mode):
        return True
    raise EndpointError(
        f"refusing socket path {path}: it is {_file_kind(info.st_mode)}, not a socket; "
        "axchat removes only its own stale sockets, so move it away"
    )


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file"


def _made_by_root(parent: Path) -> bool:
    try:
        info = os.stat(parent)
    except OSError:
        return False
    return info.st_uid == 0 and not info.st_mode & 0o022


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint.removeprefix("ipc://")) if endpoint.startswith("ipc://") else None


def describe(endpoint: str) -> str:
    path = ipc_path(endpoint)
    return str(path) if path is not None else endpoint


def is_loopback_host(host: str) -> bool:
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


def is_loopback(endpoint: str) -> bool:
    """`tcp://127.0.0.1:N`, `tcp://[::1]:N` or `tcp://localhost:N`; `*` and interface
    names are not. The same judgement as the web bridge's no-API-key rule."""
    if not endpoint.startswith("tcp://"):
        return False
    return is_loopback_host(endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]"))


def prepare_private_dir(directory: Path, group: int | None = None) -> None:
    """Create the socket's directory (mode 0700, or 0750 shared with `group`) or check
    an existing one.

    The directory is the access control: ZeroMQ's ipc sockets have no credentials
    of their own. An existing directory must be ours and closed to others; group
    access is allowed so that the system service can share with its group (systemd's
    `RuntimeDirectory=` creates it with `RuntimeDirectoryMode=0750`).
    """
    mode = 0o700 if group is None else 0o750
    try:
        directory.mkdir(mode=mode, parents=True, exist_ok=False)
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask
        if group is not None:
            os.chown(directory, -1, group)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise EndpointError(f"cannot create socket directory {directory}: {exc.strerror}") from None
    info = os.lstat(directory)
    link = _symlink_reason(directory, info, "socket directory")
    if link is not None:
        raise EndpointError(link)
    if not stat.S_ISDIR(info.st_mode):
        raise EndpointError(f"{directory} exists and is not a directory")
    if info.st_uid != os.getuid():
        raise EndpointError(f"refusing socket directory {directory}: owned by uid {info.st_uid}, not {os.getuid()}")
    current = stat.S_IMODE(info.st_mode)
    if info.st_mode & 0o007:
        raise EndpointError(
            f"refusing socket directory {directory}: mode {current:04o} lets every user in; "
            "use a directory with mode 0700 (or 0750 for a group)"
        )
    # Group access is for the one group meant to share the socket: our own group when
    # none is configured (a 0770 directory of group root would let root's group in).
    allowed_gids = {os.getgid()} if group is None else {group, os.getgid()}
    if info.st_mode & 0o070 and group is None and info.st_gid not in allowed_gids:
        raise EndpointError(
            f"refusing socket directory {directory}: mode {current:04o} lets group {info.st_gid} in; "
            "use mode 0700, or name the group with --socket-group"
        )
    if info.st_mode & 0o020 and info.st_gid not in allowed_gids:
        raise EndpointError(f"refusing socket directory {directory}: group {info.st_gid} may write to it")
    if group is not None:
        # Ours and closed to others: hand it to the group that is meant to get in.
        try:
            if info.st_gid != group:
                os.chown(directory, -1, group)
            if not info.st_mode & 0o050:
                os.chmod(directory, stat.S_IMODE(info.st_mode) | 0o050)
        except OSError as exc:
            raise EndpointError(f"cannot give group {group} the socket directory {directory}: {exc.strerror}") from None


def restrict_socket_file(path: Path, mode: int = 0o660, group: int | None = None) -> None:
    """Set the bound socket's mode (and group): a client needs write access to it."""
    os.chmod(path, mode)
    if group is not None:
        os.chown(path, -1, group)


def resolve_group(name: str | None) -> int | None:
    """A group name or numeric gid as a gid; None stays None."""
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise EndpointError(f"socket group {name!r} does not exist") from None
