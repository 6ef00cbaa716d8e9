"""A refusal in its reader's words: the daemon names the field at fault by its protocol
path (`error.param`, e.g. `sampling.max_tokens`) and opens its sentence with that path;
a frontend calls the field what its user typed (a flag, an OpenAI parameter)."""

from __future__ import annotations


def with_field_named(message: str, param: str, name: str) -> str:
    """`message` with the field it opens on, `param`, called `name`. Which field is at
    fault comes from `param`, never from the text; a sentence that does not open on it
    (one quoting the decoder) is left as the daemon wrote it."""
    if not message.startswith(param):
        return message
    return name + message[len(param) :]
