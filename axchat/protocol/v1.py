"""Wire protocol version 1: the messages a client and the daemon exchange.

Every ZeroMQ message is two frames, ``[envelope, body]``, each one MessagePack map.
The envelope says which request a frame belongs to; the body's ``type`` tag says
what it is. Keeping them apart lets the daemon name the request in its error even
when the body is unreadable. Rules for evolving this file: new fields go last and
carry defaults, so older peers still decode; a removed or retyped field means a new
major version and a new module. See docs/protocol.md for the prose version.

This module imports only msgspec and the standard library: ``axchat ask`` loads it
and must start in milliseconds.
"""

from __future__ import annotations

import enum
from typing import Literal, Union

import msgspec

PROTOCOL_MAJOR = 1
# 1.1: the `loading` event, status_reply's model residency fields; 1.2: generate.user;
# 1.3: error.param; 1.4: stats.device and status_reply.devices (several devices).
# 1.5: bounds on the envelope's `id` and on a generate's number of messages; the
# `forbidden` error code, for a client whose key was revoked while connected.
# 1.6: generate.constraint (structured output and tool calls), ChatMessage.tool_calls
# and tool_call_id, done.tool_calls, the `constraint_failed` error code.
# 1.7: speculative decoding's counts, stats.draft_* and status_reply.draft_*_total;
# status_reply's memory parts (weights_bytes, running_kv_bytes, prefix_kv_bytes), sampling.given.
# 1.8: delta.tool_calls, a tool call's name and arguments as they are made.
PROTOCOL_MINOR = 8
PROTOCOL_VERSION = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"

# Default cap on one frame's size; the daemon announces its own in `welcome`.
DEFAULT_MAX_FRAME_BYTES = 1 << 20
# The most a daemon may be configured to accept: memory for a refused frame is bounded
# by a small multiple of this (the frame, its decoded text), whatever the setting.
MAX_FRAME_BYTES_CEILING = 16 << 20
# Longest `generate.user`, characters.
MAX_USER_CHARS = 256
# Longest envelope `id`, characters: it comes back on every reply frame of the request.
MAX_ID_CHARS = 128
# Most messages in one generate: each one is a chat-template render and an encode.
MAX_MESSAGES = 4096
# Most tools one constraint may offer: each is a branch of the grammar compiled per request.
MAX_TOOLS = 128

ErrorCode = Literal[
    "bad_frame",  # not two frames, or a frame that is not MessagePack
    "unknown_type",  # the body's `type` tag names no message of this version
    "invalid_field",  # a field is missing, of the wrong type or out of range
    "frame_too_large",  # a frame is over the daemon's `max_frame_bytes`
    "unsupported_version",  # the envelope's major version is not this daemon's
    "duplicate_request",  # this client already has a live request with that id
    "unknown_model",  # generate named a model this daemon does not serve
    "context_overflow",  # the prompt does not fit in the model's context
    "busy",  # admission limits reached; retry after `retry_after_s`
    "shutting_down",  # the daemon is draining and admits nothing new
    "internal",  # a bug or device failure; the daemon keeps serving
    "load_failed",  # the model was unloaded (keep-alive) and reloading it failed
    "daemon_restarted",  # never sent: a client's own verdict when its connection dropped mid-request
    "forbidden",  # the client's CURVE key is no longer on the daemon's allow-list
    "constraint_failed",  # a constrained reply reached a state its grammar cannot continue from
]

FinishReason = Literal["stop", "length", "cancelled", "error"]


class _Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=False, omit_defaults=True):
    """Base of every body: a tagged MessagePack map."""


class Envelope(msgspec.Struct, omit_defaults=True, gc=False):
    """First frame. `id` is chosen by the client and echoed on every reply to it."""

    id: str
    v: int = PROTOCOL_MAJOR


# ---------------------------------------------------------------- client -> daemon


class Hello(_Message, tag="hello"):
    protocol: str = PROTOCOL_VERSION
    client: str = ""


class ToolCall(msgspec.Struct, omit_defaults=True, gc=False):
    """A call the model made: `arguments` is JSON text of an object."""

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, omit_defaults=True, gc=False):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # 1.6: an assistant turn's calls, and on a `tool` message the call it answers;
    # both reach the chat template as Hugging Face templates expect them.
    tool_calls: list[ToolCall] = []
    tool_call_id: str = ""


class ToolSpec(msgspec.Struct, omit_defaults=True, gc=False):
    """A function the model may call; `parameters` is JSON text of a JSON schema."""

    name: str
    description: str = ""
    parameters: str = "{}"


class Constraint(msgspec.Struct, omit_defaults=True, gc=False):
    """What the reply must match (1.6). `kind` picks the field that says it:
    `json_schema` (`schema`, JSON text), `json_object` (any JSON object), `regex` and
    `lark` (`grammar`, llguidance's syntax), `tools` (`tools`, `tool_choice`,
    `parallel_tool_calls`: the reply is text or calls in the model family's syntax,
    parsed into `done.tool_calls`)."""

    kind: Literal["json_schema", "json_object", "regex", "lark", "tools"]
    schema: str = ""
    grammar: str = ""
    tools: list[ToolSpec] = []
    tool_choice: str = "auto"  # "auto", "required", "none" (tools shown, no call), or one tool's name
    parallel_tool_calls: bool = True


class Sampling(msgspec.Struct, omit_defaults=True, gc=False):
    """Sampling knobs. Defaults are greedy decoding, as the seed script does."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: list[str] = []
    ignore_eos: bool = False  # benchmarks need an exact token count
    # 1.7: the fields above the client set itself, even to their default: a served model's
    # own defaults (an Ollama model's params) fill only the others. Encoders omit a field
    # at its default, so without this a value equal to it could not override the model's.
    given: list[str] = []


class Generate(_Message, tag="generate"):
    """Either `messages` (chat-templated by the daemon) or a raw `prompt`, not both."""

    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    model: str | None = None  # None = whatever the daemon serves
    # 1.2: the end user this request is for, when one connection serves many people (a
    # web bridge). Admission limits, fairness and prefix-cache privacy then apply per
    # (connection, user) instead of per connection. "" = the connection itself.
    user: str = ""
    constraint: Constraint | None = None  # 1.6: what the reply must match


class Cancel(_Message, tag="cancel"):
    """Cancels the live request whose id is the envelope's `id`."""


class Status(_Message, tag="status"):
    pass


class Ping(_Message, tag="ping"):
    pass


ClientMessage = Union[Hello, Generate, Cancel, Status, Ping]

# ---------------------------------------------------------------- daemon -> client


class Welcome(_Message, tag="welcome"):
    protocol: str
    server_version: str
    model: str
    backend: str
    device: str
    dtype: str
    context_length: int
    max_frame_bytes: int
    # A client with live requests must send a frame (`ping`) at least this often, or
    # its requests are cancelled; 0 = no such rule.
    client_timeout_s: float = 0.0


class ToolCallPiece(msgspec.Struct, omit_defaults=True, gc=False):
    """Part of a call as it streams: its first piece names it, later ones add arguments text."""

    index: int  # which call of the reply, from 0
    id: str = ""
    name: str = ""
    arguments: str = ""


class Delta(_Message, tag="delta"):
    text: str
    token_ids: list[int]
    # 1.8: pieces of the reply's tool calls; joined per index they make done.tool_calls.
    tool_calls: list[ToolCallPiece] = []


class Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Stats(msgspec.Struct, gc=False):
    """The seed's --show-stats figures, each measured, in milliseconds unless named."""

    tokenize_ms: float = 0.0
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    ttft_ms: float = 0.0
    generate_ms: float = 0.0
    tokens_per_s: float = 0.0
    completion_tokens: int = 0
    cpu_percent: float = 0.0
    device_temp_c: float | None = None
    device: str = ""  # which device served it, where the daemon drives several ("" with one)
    draft_proposed: int = 0  # proposed tokens verified in its decode steps (speculative decoding)
    draft_accepted: int = 0  # of those, kept: each a token that cost no step of its own


class ErrorInfo(msgspec.Struct, gc=False):
    code: ErrorCode
    message: str


class Done(_Message, tag="done"):
    """Last frame of a generate that started. `error` is set when finish_reason is error."""

    finish_reason: FinishReason
    usage: Usage
    stats: Stats
    error: ErrorInfo | None = None
    # Oldest whole turns dropped so the conversation fit the context (system kept).
    trimmed_messages: int = 0
    # 1.6: the calls a `tools` constraint's reply made (their text is not in the deltas).
    tool_calls: list[ToolCall] = []


class Queued(_Message, tag="queued"):
    """The request waits for a device slot; sent when its place in line changes.
    Position 1 is next. Not terminal: deltas and `done` follow."""

    position: int


class Loading(_Message, tag="loading"):
    """The model was unloaded after idling (keep-alive) and is being loaded again for
    this request; sent when the stage changes and about once a second meanwhile. Not
    terminal: `queued`, `delta`s and `done` follow once it is loaded."""

    model: str
    stage: str  # "config", "weights", "warm-up": what the load is doing now
    elapsed_s: float  # since this load began
    last_load_s: float | None = None  # how long the previous load took, as a guide


class Error(_Message, tag="error"):
    """Last frame of a request that failed before it started, or of a bad frame."""

    code: ErrorCode
    message: str
    retry_after_s: float | None = None
    # 1.3: the field the error is about, as a path from the body's root
    # (`sampling.max_tokens`, `messages[0].role`); None when no one field is.
    param: str | None = None


class RequestInfo(msgspec.Struct, gc=False):
    """One request the daemon holds, for `status`."""

    id: str  # the client's request id, with the last 8 hex digits of its peer
    state: Literal["queued", "prefill", "decode"]
    prompt_tokens: int
    prefilled_tokens: int
    completion_tokens: int
    max_tokens: int
    queue_position: int = 0


class DaemonState(enum.StrEnum):
    """`status_reply.state`: a string on the wire, typed in the code."""

    SERVING = "serving"
    DRAINING = "draining"  # shutting down: admits no new generate


DeviceState = Literal["serving", "unloaded", "loading", "down"]


class DeviceStatus(msgspec.Struct, gc=False):
    """One device of a daemon that drives several (`--devices`), for `status`."""

    name: str  # the daemon's name for it: device-0, device-1, ...
    label: str  # what it is: a card's name, cuda:1
    state: DeviceState
    running: int = 0
    queued: int = 0  # waiting on this device (the daemon's shared line is in StatusReply.queued)
    max_running: int = 0
    tokens_per_s: float = 0.0  # over the last 10 seconds
    temperature_c: float | None = None
    requests_total: int = 0  # placed on it since start
    affinity_hits: int = 0  # of those, later turns placed where their conversation's prefix is
    reason: str = ""  # why it is down


class StatusReply(_Message, tag="status_reply"):
    state: DaemonState
    model: str
    backend: str
    device: str
    dtype: str
    context_length: int
    uptime_s: float
    running: int
    queued: int
    kv_sequences: int
    requests_total: int
    completion_tokens_total: int
    cpu_percent: float
    rss_bytes: int
    device_temp_c: float | None = None
    pid: int = 0
    requests: list[RequestInfo] = []
    tokens_per_s: float = 0.0  # all requests together, over the last 10 seconds
    max_running: int = 0
    max_queued: int = 0
    prefix_cache_entries: int = 0
    prefix_cache_bytes: int = 0
    # Keep-alive: whether the model is on the device now; when it will be unloaded for
    # idling (Unix time), None when never (no keep-alive, or requests are live); and the
    # stage of a reload in progress.
    loaded: bool = True
    unloads_at: float | None = None
    load_stage: str | None = None
    decode_path: str = ""  # torch: "lean" (Llama-family fast path) or "generic"
    threads: int = 0  # threads of the forward (lanes x intra-op threads); 0: not applicable
    dtype_reason: str = ""  # what was measured at load to choose dtype and threads
    compiled: bool = False  # the decode step was compiled at load
    compile_s: float = 0.0  # seconds that compile and warm-up took before ready
    step_ms: float = 0.0  # mean decode forward, last 64 steps
    overhead_ms_per_token: float = 0.0  # mean daemon time between two decode steps, last 64
    devices: list[DeviceStatus] = []  # each device, where the daemon drives several
    # The daemon's memory by part, from the load's plan (0: the backend plans none, or
    # the model is unloaded): the weights, the KV cells for running sequences and for
    # kept conversations (reserved, used or not); the rest of `rss_bytes` is everything else.
    weights_bytes: int = 0
    running_kv_bytes: int = 0
    prefix_kv_bytes: int = 0
    draft_proposed_total: int = 0  # proposed tokens verified since start (speculative decoding)
    draft_accepted_total: int = 0  # of those, kept


class Pong(_Message, tag="pong"):
    pass


DaemonMessage = Union[Welcome, Delta, Done, Error, StatusReply, Pong, Queued, Loading]

# Replies after which nothing more comes for that request id.
TERMINAL = (Welcome, Done, Error, StatusReply, Pong)

# ---------------------------------------------------------------- codecs

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_client_decoder = msgspec.msgpack.Decoder(ClientMessage)
_daemon_decoder = msgspec.msgpack.Decoder(DaemonMessage)


def encode(envelope: Envelope, body: ClientMessage | DaemonMessage) -> list[bytes]:
    return [_encoder.encode(envelope), _encoder.encode(body)]


def encode_body(body: ClientMessage | DaemonMessage) -> bytes:
    return _encoder.encode(body)


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(frame: bytes | memoryview) -> Envelope:
    return _envelope_decoder.decode(frame)


def decode_client_body(frame: bytes | memoryview) -> ClientMessage:
    return _client_decoder.decode(frame)


def decode_daemon_body(frame: bytes) -> DaemonMessage:
    return _daemon_decoder.decode(frame)
