"""`axchat keys`: create and list the CURVE key files a `tcp://` daemon and its clients use,
and manage the daemon's allow-list of client public keys."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from axchat import curve_keys as ck

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class KeysCommandError(Exception):
    """One line for the user."""


def private_dir(directory: Path) -> Path:
    """The keys directory, made 0700, or an existing one checked to be ours and closed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(directory)
    if info.st_uid != os.getuid():
        raise KeysCommandError(f"refusing keys directory {directory}: owned by uid {info.st_uid}, not {os.getuid()}")
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask; ours, so tighten it
    return directory


def create_pair(directory: Path, name: str, force: bool) -> tuple[Path, Path]:
    """`name.key` and `name.key_secret` (0600), written whole or not at all."""
    from zmq.auth.certs import create_certificates

    public = directory / (name + ck.PUBLIC_SUFFIX)
    secret = directory / (name + ck.SECRET_SUFFIX)
    if not force and (public.exists() or secret.exists()):
        raise KeysCommandError(
            f"{secret} already exists; pass --force to replace it (clients holding the old key stop working)"
        )
    # Made in a private scratch directory beside the final one, then moved in: no reader
    # ever sees half a pair, and the secret is never readable by others, umask or not.
    scratch = Path(tempfile.mkdtemp(prefix=".new-", dir=directory))
    try:
        made_public, made_secret = (Path(p) for p in create_certificates(scratch, name))
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return public, secret


def allow(directory: Path, spec: str, name: str | None) -> Path:
    """Copy a client's public key into the allow-list as `NAME.key`."""
    try:
        key = ck.read_public(spec)
    except ck.KeysError as exc:
        raise KeysCommandError(str(exc)) from None
    if name is None:
        stem = Path(spec).name.split(".")[0] if os.path.exists(spec) else ""
        # Every client's file is called client.key: name those by a digest of the key.
        name = stem if stem and stem != ck.CLIENT else f"client-{hashlib.sha256(key).hexdigest()[:12]}"
    if not NAME_RE.fullmatch(name):
        raise KeysCommandError(f"bad name {name!r}: use letters, digits, '.', '_' or '-'")
    allowed = directory / ck.ALLOWED_CLIENTS
    allowed.mkdir(mode=0o700, exist_ok=True)
    target = allowed / (name + ck.PUBLIC_SUFFIX)
    if target.exists():
        raise KeysCommandError(f"{target} already exists; pick another --name or `axchat keys revoke {name}` first")
    # Written beside it and renamed in: a daemon reading the list never sees half a file.
    scratch = allowed / f".{name}.new"
    scratch.write_text(f'# axchat allowed client {name}\ncurve\n    public-key = "{key.decode()}"\n')
    os.replace(scratch, target)
    return target


def _public_of(path: Path) -> str:
    try:
        return ck.read_public(str(path)).decode()
    except ck.KeysError as exc:
        return f"unreadable: {exc}"


def listing(directory: Path) -> list[str]:
    lines = [f"keys directory: {directory}"]
    for role, name in (("server", ck.SERVER), ("client", ck.CLIENT)):
        public = directory / (name + ck.PUBLIC_SUFFIX)
        secret = directory / (name + ck.SECRET_SUFFIX)
        if public.exists():
            has_secret = "with its secret key" if secret.exists() else "public key only"
            lines.append(f"{role} key: {_public_of(public)}  ({public}, {has_secret})")
        else:
            lines.append(f"{role} key: none (`axchat keys {role}` makes one)")
    allowed = directory / ck.ALLOWED_CLIENTS
    files = sorted(allowed.glob("*" + ck.PUBLIC_SUFFIX)) if allowed.is_dir() else []
    lines.append(f"allowed clients ({len(files)}):")
    lines += [f"  {f.name.removesuffix(ck.PUBLIC_SUFFIX)}: {_public_of(f)}" for f in files]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="axchat keys",
        description="CURVE keys for tcp:// daemons. On the daemon's host: `axchat keys server`, then "
        "`axchat keys allow CLIENT.key` for each client. On a client: `axchat keys client`, and copy the "
        "daemon's server.key into the keys directory.",
    )
    p.add_argument("--keys-dir", help=f"default: ${ck.ENV_KEYS_DIR}, else $XDG_CONFIG_HOME/axchat/keys")
    sub = p.add_subparsers(dest="action")
    sub.add_parser("list", help="show the keys and the allow-list (the default)")
    for role in ("server", "client"):
        made = sub.add_parser(role, help=f"create the {role} key pair")
        made.add_argument("--force", action="store_true", help="replace an existing pair")
    allowing = sub.add_parser("allow", help="add a client's public key to the daemon's allow-list")
    allowing.add_argument(
        "key", help="the client's .key file, or its 40-character public key (after `--` when it starts with '-')"
    )
    allowing.add_argument("--name", help="name in the allow-list (default: from the file name)")
    revoking = sub.add_parser("revoke", help="remove a client from the allow-list")
    revoking.add_argument("name")
    return p


def run(args: argparse.Namespace) -> list[str]:
    directory = Path(args.keys_dir).expanduser() if args.keys_dir else ck.keys_dir()
    action = args.action or "list"
    if action == "list":
        return listing(directory)
    private_dir(directory)
    if action in ("server", "client"):
        public, secret = create_pair(directory, action, args.force)
        key = ck.read_public(str(public)).decode()
        after = (
            f"copy {public} to each client's keys directory"
            if action == "server"
            else f"on the daemon's host: `axchat keys allow` this {public.name} (or the key above)"
        )
        return [f"{action} key: {key}", f"wrote {public} and {secret} (private)", f"next: {after}"]
    if action == "allow":
        return [f"allowed: {allow(directory, args.key, args.name)} (a running daemon reads it at the next connection)"]
    target = directory / ck.ALLOWED_CLIENTS / (args.name + ck.PUBLIC_SUFFIX)
    if not NAME_RE.fullmatch(args.name) or not target.exists():
        raise KeysCommandError(f"no allowed client named {args.name!r} in {target.parent}")
    target.unlink()
    return [f"revoked {args.name}: a running daemon refuses its key from its next request on"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lines = run(args)
    except (KeysCommandError, ck.KeysError, OSError) as exc:
        print(f"axchat keys: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
