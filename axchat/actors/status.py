"""The status model: each part of the daemon fills its own typed section (the front
door the model's facts and the daemon's phase, the device or the placer the requests
and the engine, telemetry the totals and readings), and `status_reply` alone puts them
together; `welcome` answers `hello` from the same facts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from axchat.protocol.v1 import DaemonState, DeviceStatus, RequestInfo, StatusReply, Welcome

if TYPE_CHECKING:
    from axchat.actors.backends.base import BackendInfo


class ModelFacts(msgspec.Struct, frozen=True, gc=False):
    """The front door's section: what is served, fixed at load."""

    model: str = ""
    backend: str = ""
    device: str = ""
    dtype: str = ""
    context_length: int = 0
    decode_path: str = ""
    threads: int = 0  # of the forward, all lanes together
    dtype_reason: str = ""
    compiled: bool = False
    compile_s: float = 0.0
    weights_bytes: int = 0
    running_kv_bytes: int = 0
    prefix_kv_bytes: int = 0

    @classmethod
    def of(cls, info: BackendInfo) -> ModelFacts:
        return cls(
            model=info.model,
            backend=info.backend,
            device=info.device,
            dtype=info.dtype,
            context_length=info.context_length,
            decode_path=info.decode_path,
            threads=info.threads * info.lanes,
            dtype_reason=info.dtype_reason,
            compiled=info.compiled,
            compile_s=info.compile_s,
            weights_bytes=info.weights_bytes,
            running_kv_bytes=info.running_kv_bytes,
            prefix_kv_bytes=info.prefix_kv_bytes,
        )


class DeviceSection(msgspec.Struct, gc=False):
    """A device's section (the placer's: its devices' summed, a line for each)."""

    running: int = 0
    queued: int = 0
    kv_sequences: int = 0
    requests: list[RequestInfo] = []
    max_running: int = 0
    prefix_cache_entries: int = 0
    prefix_cache_bytes: int = 0
    loaded: bool = True
    unloads_at: float | None = None
    load_stage: str | None = None
    step_ms: float = 0.0
    overhead_ms_per_token: float = 0.0
    devices: list[DeviceStatus] = []


class Totals(msgspec.Struct, gc=False):
    """Telemetry's section: since start, lately, and the process and device readings."""

    uptime_s: float
    requests_total: int
    completion_tokens_total: int
    cpu_percent: float
    rss_bytes: int
    device_temp_c: float | None
    pid: int
    tokens_per_s: float
    max_queued: int
    temperatures: dict[str, float | None] = {}  # each device's own reading, by name
    draft_proposed_total: int = 0
    draft_accepted_total: int = 0


def status_reply(state: DaemonState, model: ModelFacts, device: DeviceSection, totals: Totals) -> StatusReply:
    """The one `status_reply`, from each part's section."""
    # What the load planned is held only while the model is loaded (keep-alive unloads it).
    # Kept conversations' KV is host memory taken as they finish: what they hold now.
    kept = min(model.prefix_kv_bytes, device.prefix_cache_bytes)
    held = (model.weights_bytes, model.running_kv_bytes, kept) if device.loaded else (0, 0, 0)
    return StatusReply(
        state=state,
        model=model.model,
        backend=model.backend,
        device=model.device,
        dtype=model.dtype,
        context_length=model.context_length,
        decode_path=model.decode_path,
        threads=model.threads,
        dtype_reason=model.dtype_reason,
        compiled=model.compiled,
        compile_s=model.compile_s,
        running=device.running,
        queued=device.queued,
        kv_sequences=device.kv_sequences,
        requests=device.requests,
        max_running=device.max_running,
        prefix_cache_entries=device.prefix_cache_entries,
        prefix_cache_bytes=device.prefix_cache_bytes,
        loaded=device.loaded,
        unloads_at=device.unloads_at,
        load_stage=device.load_stage,
        step_ms=device.step_ms,
        overhead_ms_per_token=device.overhead_ms_per_token,
        devices=[_with_temperature(line, totals.temperatures) for line in device.devices],
        uptime_s=totals.uptime_s,
        requests_total=totals.requests_total,
        completion_tokens_total=totals.completion_tokens_total,
        cpu_percent=totals.cpu_percent,
        rss_bytes=totals.rss_bytes,
        device_temp_c=totals.device_temp_c,
        pid=totals.pid,
        tokens_per_s=totals.tokens_per_s,
        max_queued=totals.max_queued,
        weights_bytes=held[0],
        running_kv_bytes=held[1],
        prefix_kv_bytes=held[2],
        draft_proposed_total=totals.draft_proposed_total,
        draft_accepted_total=totals.draft_accepted_total,
    )


def welcome(model: ModelFacts, *, protocol: str, server_version: str, max_frame_bytes: int, client_timeout_s: float) -> Welcome:
    """`hello`'s answer: the same facts as `status_reply`, and the connection's rules."""
    return Welcome(
        protocol=protocol,
        server_version=server_version,
        model=model.model,
        backend=model.backend,
        device=model.device,
        dtype=model.dtype,
        context_length=model.context_length,
        max_frame_bytes=max_frame_bytes,
        client_timeout_s=client_timeout_s,
    )


def _with_temperature(line: DeviceStatus, temperatures: dict[str, float | None]) -> DeviceStatus:
    """A device's line with its own reading (a device that is down has none)."""
    if line.state == "down":
        return line
    return msgspec.structs.replace(line, temperature_c=temperatures.get(line.name))
