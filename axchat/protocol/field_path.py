"""Which field a msgspec validation error is about, named as the protocol's `param`
names fields: a path from the body's root, `sampling.max_tokens`, `messages[0].role`.

msgspec 0.x gives `ValidationError` no attribute for the path: it is only the end of
the message, `` - at `$.sampling.max_tokens` ``. This is the one place that reads it,
with one rule anchored at that end (msgspec always puts the path last), so the text
before it, which may quote the client's own bytes, is never searched. Everything else
about an error (its code) is decided by the exception's type and this path.
"""

from __future__ import annotations

import msgspec

_PATH_MARK = " - at `$"


def field_path(exc: msgspec.ValidationError) -> str | None:
    """The path of the offending field; None when the error is about the whole value
    (not a map, a required field missing at the root)."""
    text = str(exc)
    _, mark, tail = text.rpartition(_PATH_MARK)
    if not mark or not tail.endswith("`") or "`" in tail[:-1]:
        return None
    return tail[:-1].removeprefix(".") or None
