"""Where the bridge's API key comes from, and whether it is good enough: a file or the
environment (both private to the user), the `--api-key` flag last because every user on
the machine can read it in `ps`; and a key too short to resist guessing is refused."""

from __future__ import annotations

import os
import stat

ENV_API_KEY = "AXCHAT_API_KEY"
MIN_KEY_CHARS = 16


class UnusableKey(Exception):
    """The key given cannot be used; one line for the user."""


def find_key(flag: str | None, key_file: str | None) -> tuple[str | None, str | None]:
    """(key, a warning to log) from --api-key-file, $AXCHAT_API_KEY or --api-key."""
    if key_file:
        try:
            with open(key_file) as f:
                mode = os.fstat(f.fileno()).st_mode  # of the file read, not of whatever is there later
                key = f.read().strip()
        except OSError as exc:
            raise UnusableKey(f"cannot read the API key file {key_file}: {exc.strerror}") from None
        return check(key, f"the key in {key_file}"), _readable_by_others(key_file, mode)
    env = os.environ.get(ENV_API_KEY)
    if env is not None and env.strip():
        return check(env.strip(), f"${ENV_API_KEY}"), None
    if flag is not None:
        warning = "--api-key is visible to every user in `ps`; prefer --api-key-file or $" + ENV_API_KEY
        return check(flag.strip(), "--api-key"), warning
    return None, None


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
