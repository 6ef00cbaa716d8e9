"""What the front door checks in a `generate` before any work: the fields, the model's
name, sampling values, the message count, and the cheap length floor (a prompt whose
length alone proves it cannot fit is refused before it is copied on to the tokenizer,
so a refused frame costs about its own size in memory). Large bodies are sized from
their encoded text without copying it out of the frame."""

from __future__ import annotations

import msgspec

from axchat.actors.backends.base import BackendInfo
from axchat.actors.prompt_fit import LengthFloor, kept_chars, kept_positions, prompt_field
from axchat.actors.token_choice import validate as validate_sampling
from axchat.protocol import v1

# Bodies larger than this are first sized without copying their text out of the frame.
SIZE_PEEK_BYTES = 64 << 10


class _SizedMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: msgspec.Raw


class _SizedGenerate(msgspec.Struct, tag="generate", tag_field="type", forbid_unknown_fields=False):
    """Just enough of `generate` to bound its size: the texts stay views into the frame."""

    messages: list[_SizedMessage] = []
    prompt: msgspec.Raw = msgspec.Raw()  # Raw: a view of the encoded text, not a copy


_size_decoder = msgspec.msgpack.Decoder(_SizedGenerate)


class GenerateChecks:
    def __init__(self, info: BackendInfo, model_names: set[str], floor: LengthFloor) -> None:
        self._info = info
        self._model_names = model_names
        self._floor = floor

    def refusal(self, gen: v1.Generate) -> v1.Error | None:
        """The refusal for a generate this daemon cannot run, naming the field at fault."""
        if (gen.messages is None) == (gen.prompt is None):
            text = "generate needs exactly one of `messages` or `prompt`"
            return v1.Error(code="invalid_field", message=text, param="messages" if gen.messages is None else "prompt")
        if gen.messages is not None and not gen.messages:
            return v1.Error(code="invalid_field", message="`messages` is empty", param="messages")
        if len(gen.user) > v1.MAX_USER_CHARS:
            text = f"`user` is {len(gen.user)} characters; the limit is {v1.MAX_USER_CHARS}"
            return v1.Error(code="invalid_field", message=text, param="user")
        if gen.model is not None and gen.model not in self._model_names:
            text = f"model {gen.model!r} is not served here; this daemon serves {self._info.model!r}"
            return v1.Error(code="unknown_model", message=text, param="model")
        bad = validate_sampling(gen.sampling)
        if bad is not None:
            return v1.Error(code="invalid_field", message=bad.message, param=bad.param)
        if gen.messages is not None and len(gen.messages) > v1.MAX_MESSAGES:
            text = f"{len(gen.messages)} messages; a request may hold at most {v1.MAX_MESSAGES}"
            return v1.Error(code="invalid_field", message=text, param="messages")
        if gen.prompt is not None:
            floor = self._floor.of(len(gen.prompt))
        else:
            messages = gen.messages or []
            floor = self._floor.of(kept_chars(messages), len(kept_positions([msg.role for msg in messages])))
        if floor >= self._info.context_length:
            return v1.Error(code="context_overflow", message=self.overflow_text(floor), param=prompt_field(gen.prompt))
        return None

    def encoded_refusal(self, raw_body: memoryview) -> v1.Error | None:
        """For a large body, before it is decoded: `context_overflow` when its encoded
        text alone proves it cannot fit (a character is at most 4 UTF-8 bytes)."""
        if len(raw_body) <= SIZE_PEEK_BYTES:
            return None
        try:
            shape = _size_decoder.decode(raw_body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None  # not a generate: the full decode judges it
        if shape.prompt:
            floor, param = self._floor.of(len(shape.prompt) // 4), "prompt"
        elif shape.messages:
            kept = kept_positions([msg.role for msg in shape.messages])
            floor, param = self._floor.of(sum(len(shape.messages[i].content) for i in kept) // 4, len(kept)), "messages"
        else:
            return None
        if floor < self._info.context_length:
            return None
        return v1.Error(code="context_overflow", message=self.overflow_text(floor), param=param)

    def overflow_text(self, floor: int) -> str:
        return (
            f"the prompt is at least {floor} tokens, even after dropping every older turn that could go, "
            f"but the model's context is {self._info.context_length} tokens, including the reply"
        )
