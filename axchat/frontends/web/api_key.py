"""Where the bridge's API keys come from, and whether they are good enough: a key file
(one key per application, each with a name), the environment, or the `--api-key` flag
last, because every user on the machine can read it in `ps`. A key too short to resist
guessing is refused. The name a key is known by namespaces the end users of the
requests it authenticates, so one application cannot speak as another's users.

Key file: one `NAME KEY` per line (`#` starts a comment); a file holding a single bare
`KEY` line is one key named `default`.
"""

from __future__ import annotations

import os
import re
import stat

ENV_API_KEY = "AXCHAT_API_KEY"
MIN_KEY_CHARS = 16
DEFAULT_NAME = "default"
KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class UnusableKey(Exception):
    """The key given cannot be used; one line for the user."""


def find_keys(flag: str | None, key_file: str | None) -> tuple[dict[str, str], str | None]:
    """(name -> key, a warning to log) from --api-key-file, $AXCHAT_API_KEY or --api-key;
    no keys when none is given."""
    if key_file:
        try:
            with open(key_file) as f:
                mode = os.fstat(f.fileno()).st_mode  # of the file read, not of whatever is there later
                text = f.read()
        except OSError as exc:
            raise UnusableKey(f"cannot read the API key file {key_file}: {exc.strerror}") from None
        return parse_key_file(text, key_file), _readable_by_others(key_file, mode)
    env = os.environ.get(ENV_API_KEY)
    if env is not None and env.strip():
        return {DEFAULT_NAME: check(env.strip(), f"${ENV_API_KEY}")}, None
    if flag is not None:
        warning = "--api-key is visible to every user in `ps`; prefer --api-key-file or $" + ENV_API_KEY
        return {DEFAULT_NAME: check(flag.strip(), "--api-key")}, warning
    return {}, None


def parse_key_file(text: str, where: str) -> dict[str, str]:
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.strip().startswith("#")]
    keys: dict[str, str] = {}
    for n, line in lines:
        fields = line.split()
        if len(fields) == 1 and len(lines) == 1:
            name, key = DEFAULT_NAME, fields[0]
        elif len(fields) == 2:
            name, key = fields
        else:
            raise UnusableKey(f"{where}, line {n}: expected `NAME KEY`, one application's key per line")
        if not KEY_NAME.fullmatch(name):
            raise UnusableKey(f"{where}, line {n}: a key's name is 1-64 letters, digits, '.', '_' or '-'")
        if name in keys:
            raise UnusableKey(f"{where}, line {n}: the name {name!r} is given twice")
        if key in keys.values():
            raise UnusableKey(f"{where}, line {n}: the same key under two names; each application needs its own")
        keys[name] = check(key, f"{where}, line {n} ({name!r})")
    if not keys:
        raise UnusableKey(f"{where} holds no key")
    return keys


def _readable_by_others(key_file: str, mode: int) -> str | None:
    # Whoever can read the key can use the bridge as its owner does.
    if not mode & 0o044:
        return None
    return (
        f"the API key file {key_file} has mode {stat.S_IMODE(mode):04o}: its group or other users can read it; "
        f"`chmod 600 {key_file}`"
    )


def check(key: str, where: str) -> str:
    if len(key) < MIN_KEY_CHARS:
        raise UnusableKey(f"{where} is {len(key)} characters; an API key needs at least {MIN_KEY_CHARS}")
    return key
