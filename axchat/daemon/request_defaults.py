"""The served model's own request defaults, for every client alike: an Ollama model's
params layer (sampling settings, stop strings) and system layer (the system prompt).

A request's own values win: a sampling field the request lists in `sampling.given`, or
one away from the protocol's default (encoders omit defaults, so an older client's field
at its default reads as left out); stop strings apply when the request names none;
the system prompt when the conversation does not open with one. Raw prompts get no
system prompt: they are the exact text to continue."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgspec

from axchat.actors.token_choice import MAX_TOKENS_CEILING, validate
from axchat.models.resolve import ResolvedModel
from axchat.protocol import v1

log = logging.getLogger("axchat.daemon")

# Ollama's parameter names for the protocol's sampling fields.
_OLLAMA_NAMES = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repetition_penalty",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
}
_PROTOCOL = v1.Sampling()


class BadDefaults(Exception):
    """A model's defaults that no request could run with; one line naming the setting."""


@dataclass(frozen=True)
class RequestDefaults:
    sampling: dict[str, object] = field(default_factory=dict)  # protocol field -> the model's value
    system: str | None = None

    @classmethod
    def from_ollama(cls, name: str, params: dict[str, object], system: str | None) -> RequestDefaults:
        """From an Ollama model's params and system layers. Settings axchat has no use
        for (the runner's `num_ctx`, `num_gpu`, ...) are left out."""
        wanted = {_OLLAMA_NAMES[k]: v for k, v in params.items() if k in _OLLAMA_NAMES}
        if isinstance(wanted.get("stop"), str):
            wanted["stop"] = [wanted["stop"]]
        if wanted.get("seed") == -1:  # Ollama's "fresh randomness", the protocol's null
            del wanted["seed"]
        if wanted.get("max_tokens") in (-1, -2):  # "until it stops", "until the context is full"
            wanted["max_tokens"] = MAX_TOKENS_CEILING
        try:
            sampling = msgspec.convert(wanted, v1.Sampling)
        except msgspec.ValidationError as exc:
            raise BadDefaults(f"{name}: its params layer cannot be used: {exc}") from None
        bad = validate(sampling)
        if bad is not None:  # named as the params layer names it, not by its protocol path
            field = bad.param.removeprefix("sampling.").split("[", 1)[0]
            ollama = next((k for k, v in _OLLAMA_NAMES.items() if v == field), field)
            why = bad.message.removeprefix(bad.param)
            raise BadDefaults(f"{name}: its params layer cannot be used: {ollama}{why}")
        return cls({k: getattr(sampling, k) for k in wanted}, system or None)

    def apply(self, gen: v1.Generate) -> v1.Generate:
        """`gen` with the model's defaults where it has none of its own."""
        own = set(gen.sampling.given)
        changes = {
            k: v for k, v in self.sampling.items() if k not in own and getattr(gen.sampling, k) == getattr(_PROTOCOL, k)
        }
        messages = gen.messages
        if self.system and messages and messages[0].role != "system":
            messages = [v1.ChatMessage(role="system", content=self.system), *messages]
        if not changes and messages is gen.messages:
            return gen
        return msgspec.structs.replace(gen, sampling=msgspec.structs.replace(gen.sampling, **changes), messages=messages)


NO_DEFAULTS = RequestDefaults()


def for_model(model: ResolvedModel) -> RequestDefaults:
    """The served model's own defaults: none, or an Ollama model's. Raises BadDefaults."""
    if model.ollama is None:
        return NO_DEFAULTS
    return RequestDefaults.from_ollama(model.ollama.name, model.ollama.params, model.ollama.system)


def check(model: ResolvedModel) -> None:
    """Before the load: a params layer no request could run with stops the start
    (BadDefaults), and settings axchat leaves unused are logged."""
    for_model(model)
    if model.ollama is not None:
        unused = sorted(set(model.ollama.params) - set(_OLLAMA_NAMES))
        if unused:
            log.info("%s: its params layer's %s are not used by axchat", model.ollama.name, ", ".join(unused))
