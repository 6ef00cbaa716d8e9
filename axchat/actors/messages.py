"""Messages the daemon's actors send one another over inproc ZeroMQ, as MessagePack.

These never leave the daemon, so they can change freely; they are still plain
msgspec structs (no Python objects, no pickle) so that any actor could move to its
own process by changing an endpoint. `rid` is the daemon-wide request number the
front door assigns; clients never see it.

Request flow (each arrow one message):
  front door -Encode-> tokenizer -Admit-> device <-Logits/Sampled-> sampler
  device -TokenOut/Ended-> tokenizer -TextOut/Finished-> reply -Outbound-> front door
  front door -StatusQuery-> device -StatusQuery-> reply -Outbound-> front door
Everything a client receives for a request passes through that one chain, so its
frames arrive in order and the terminal frame is always last.
"""

from __future__ import annotations

from typing import Union

import msgspec

from axchat.actors.status import DeviceSection, ModelFacts
from axchat.protocol.v1 import (
    ChatMessage,
    Constraint,
    DaemonState,
    Error,
    ErrorCode,
    ErrorInfo,
    FinishReason,
    Sampling,
    ToolCall,
    ToolCallPiece,
)


class _Internal(msgspec.Struct, tag_field="t", gc=False):
    pass


class Failure(msgspec.Struct, gc=False):
    """Why a request failed or was refused, carried from where that is found to the frame
    the client gets. Whoever acts on it matches `code` (the protocol's closed set) and
    reads the field at fault from `param`; `message` is for people only."""

    code: ErrorCode
    message: str
    param: str | None = None  # the field at fault, as the protocol's `error.param`

    def as_error(self) -> Error:
        return Error(code=self.code, message=self.message, param=self.param)

    def as_done_error(self) -> ErrorInfo:
        # `done.error` names no field: a request that started had none at fault.
        return ErrorInfo(code=self.code, message=self.message)


class Close(_Internal, tag="close"):
    """Mailbox sentinel: the actor finishes what it holds and stops reading."""


class Encode(_Internal, tag="encode"):
    rid: int
    label: str  # for log lines: the client's request id and peer
    client: str  # the peer: the unit of fairness and of prefix-cache privacy
    messages: list[ChatMessage] | None
    prompt: str | None
    sampling: Sampling
    received_ns: int  # time.monotonic_ns() when the front door read the frame
    cpu_ns: int  # time.process_time_ns() then, for the per-request CPU figure
    constraint: Constraint | None = None


class CancelRequest(_Internal, tag="cancel"):
    """Stop this request at the next step boundary. Travels front door -> tokenizer ->
    device so it can never overtake the request it cancels."""

    rid: int
    reason: FinishReason = "cancelled"


def client_key(connection: str, user: str) -> str:
    """The unit of fairness and of prefix-cache privacy: a connection (its routing id in
    hex), or one end user behind it (`generate.user`). The hex part cannot be forged by
    a user name, so one connection's users can never pose as another connection."""
    return connection if not user else f"{connection}/{user}"


def connection_of(client: str) -> str:
    return client.partition("/")[0]


class ForgetClient(_Internal, tag="forget_client"):
    """A connection is gone: its prefix-cache entries can never be reused, so free them.
    Travels front door -> tokenizer -> device, behind the cancels of its requests."""

    connection: str  # the hex routing id; entries of every user behind it go too


class Admit(_Internal, tag="admit"):
    rid: int
    label: str
    client: str
    prompt_ids: list[int]
    sampling: Sampling
    eos_ids: list[int]
    # time.monotonic_ns() when it joined the daemon's line, where a placer held it before
    # this device (0: now): its queue time counts from there.
    queued_since_ns: int = 0
    # Other prompts the tokenizer was still encoding when it sent this one: a burst of
    # requests still arriving, which an idle device waits for to prefill them together.
    more_coming: int = 0
    grammar: str = ""  # llguidance grammar the reply must match (checked by the tokenizer); "" = none


class QueuePosition(_Internal, tag="queue_position"):
    """Device -> tokenizer -> reply stage: the request's place in line changed."""

    rid: int
    position: int


class Loading(_Internal, tag="loading"):
    """Device -> tokenizer -> reply stage: the request waits for the model to be loaded
    again (keep-alive unloaded it); where the load stands."""

    rid: int
    stage: str
    elapsed_s: float
    last_load_s: float | None = None


class Logits(_Internal, tag="logits"):
    """One row of float32 logits. The first of a request carries what the sampler
    needs to set up (`sampling`, `context_ids`); later ones only the row."""

    rid: int
    data: bytes
    sampling: Sampling | None = None
    context_ids: list[int] | None = None
    reply_to: str = "device"  # the device actor that sent it (first row only): where Sampled goes


class Sampled(_Internal, tag="sampled"):
    rid: int
    token_id: int


class ForgetSequence(_Internal, tag="forget"):
    rid: int


class StopSequence(_Internal, tag="stop"):
    """Tokenizer -> device: a stop string matched in the reply's first
    `completion_tokens` tokens; the device ends the turn there (`turn_end.py`)."""

    rid: int
    completion_tokens: int


class TokenOut(_Internal, tag="token"):
    """A stream's next tokens, in order (several when the device ran steps ahead)."""

    rid: int
    token_ids: list[int]


class DeviceTimings(msgspec.Struct, gc=False):
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ns: int = 0
    last_token_ns: int = 0
    prefill_start_ns: int = 0
    draft_proposed: int = 0  # proposed tokens verified (speculative decoding)
    draft_accepted: int = 0  # of those, kept


class Ended(_Internal, tag="ended"):
    rid: int
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    timings: DeviceTimings
    error: Failure | None = None
    device: str = "device"  # the device actor that served it


class TextOut(_Internal, tag="text"):
    rid: int
    text: str
    token_ids: list[int]
    tool_calls: list[ToolCallPiece] = []


class Finished(_Internal, tag="finished"):
    rid: int
    trimmed_messages: int
    label: str
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    tokenize_ms: float
    received_ns: int
    cpu_ns: int
    timings: DeviceTimings
    error: Failure | None = None
    device: str = ""  # which of several devices served it ("" with one)
    tool_calls: list[ToolCall] = []


class Rejected(_Internal, tag="rejected"):
    """A request refused before it reached the device (context overflow, bad sampling)."""

    rid: int
    label: str
    error: Failure


class StatusQuery(_Internal, tag="status_query"):
    """A client's `status` on its way front door -> device (or placer) -> reply stage.
    The front door sends the daemon's phase and the model's facts; the device (the
    placer: its devices' together) adds its section; the reply stage adds telemetry's
    and assembles the reply (`status.status_reply`). A query with `device` set is a
    device's answer, one without is still asking."""

    rid: int
    state: DaemonState
    model: ModelFacts = msgspec.field(default_factory=ModelFacts)
    device: DeviceSection | None = None


class DeviceReading(_Internal, tag="device_reading"):
    """Device -> telemetry: the device's own sensor, read on its thread, sent when it
    changes (None: it has none, or the model is unloaded)."""

    device: str  # the device actor's name
    temperature_c: float | None = None


class DeviceDown(_Internal, tag="device_down"):
    """Supervisor -> placer: a device actor lost its step loop or stopped; place nothing
    more on it and fail what it held."""

    name: str
    reason: str


class DeviceResidency(_Internal, tag="device_residency"):
    """Device -> placer: keep-alive is unloading the model from this device, or it is
    loaded again. The placer prefers a device that holds the model to one that must load
    it again (seconds), and an unloaded device's cached prefixes are gone."""

    device: str  # the device actor's name
    loaded: bool


class Outbound(_Internal, tag="outbound"):
    """Reply stage -> front door: an encoded protocol body for the request's client."""

    rid: int
    body: bytes
    final: bool


class Abort(_Internal, tag="abort"):
    """Supervisor -> front door: a handler failed on this request; answer the client
    with an error now, and drop anything that still arrives for it."""

    rid: int
    error: Failure


ActorMessage = Union[
    Close,
    Encode,
    CancelRequest,
    ForgetClient,
    Admit,
    Logits,
    Sampled,
    ForgetSequence,
    StopSequence,
    TokenOut,
    QueuePosition,
    Loading,
    Ended,
    TextOut,
    Finished,
    Rejected,
    StatusQuery,
    DeviceReading,
    DeviceDown,
    DeviceResidency,
    Outbound,
    Abort,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ActorMessage)


def encode(msg: ActorMessage) -> bytes:
    return _encoder.encode(msg)


def decode(frame: bytes) -> ActorMessage:
    return _decoder.decode(frame)
