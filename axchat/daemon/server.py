"""The daemon's lifecycle: load the model, start the actors in order, serve, and on a
signal drain then stop everything in reverse order.

States: loading -> serving -> draining -> stopped. Signal handlers only set an event;
all the work happens here, on the loop. (While serving, keep-alive may unload and
reload the model: the device actor owns that.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from axchat import endpoint as ep
from axchat.actors.backends import DeviceBackend, ModelLoadError
from axchat.actors.device.actor import DeviceActor
from axchat.actors.device.residency import Residency
from axchat.actors.mailbox import Actor, Bus, send_close
from axchat.actors.reply import ReplyActor
from axchat.actors.sampler import SamplerActor
from axchat.actors.token_mask import ConstraintVocab
from axchat.actors.tokenizer import TokenizerActor, end_of_turn_ids
from axchat.daemon import curve_auth, device_group, model_load, request_defaults, socket_lock
from axchat.daemon.backend_choice import choose_backend
from axchat.daemon.config import ServeConfig
from axchat.daemon.draft_choice import draft_source
from axchat.daemon.frontdoor import FrontDoor
from axchat.daemon.notify import EXTEND_TIMEOUT_S, Notifier, ping_watchdog
from axchat.daemon.startup_error import StartupError
from axchat.daemon.supervisor import DaemonSupervisor
from axchat.models.resolve import ModelNotFound, ResolvedModel, ensure_available, resolve

log = logging.getLogger("axchat.daemon")

ACTOR_CLOSE_TIMEOUT_S = 5.0
CONTEXT_TERM_TIMEOUT_S = 5.0
CANCEL_GRACE_S = 5.0


def resolve_model(cfg: ServeConfig) -> ResolvedModel:
    """--model as the user named it (bundled, catalog, path or hub id), or axchat-mini."""
    try:
        resolved = resolve(cfg.model)
        ensure_available(resolved)
        request_defaults.check(resolved)
    except (ModelNotFound, request_defaults.BadDefaults) as exc:
        raise StartupError(str(exc)) from None
    if resolved.note:
        log.info("%s", resolved.note)
    return resolved


def claim_endpoint(endpoint: str, group: int | None = None) -> int | None:
    """Make the socket's private directory, take the socket's lock (returning its file
    descriptor, to keep open until exit) and clear a stale socket file, refusing if
    another daemon holds the lock or answers there."""
    path = ep.ipc_path(endpoint)
    if path is None:
        return None
    ep.prepare_private_dir(path.parent, group)
    try:
        lock_fd = socket_lock.take(path)
    except socket_lock.SocketTaken as exc:
        raise StartupError(str(exc)) from None
    try:
        _clear_stale(path, endpoint)
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd


def _clear_stale(path: Path, endpoint: str) -> None:
    if not ep.socket_file_exists(path):
        return
    from axchat.client import Client, DaemonUnavailable, RequestFailed

    with Client(endpoint, connect_timeout_s=0.5) as probe:
        try:
            probe.hello()
        except DaemonUnavailable:
            log.info("removing stale socket %s", path)
            path.unlink(missing_ok=True)
            return
        except RequestFailed:
            pass
    raise StartupError(f"another axchat daemon is already serving at {path}")


async def load_model(cfg: ServeConfig, model: str, phase: _Phase | None = None) -> tuple[DeviceBackend, Any]:
    """The start-up load, its stages shown in `phase` (so in systemd's STATUS=)."""
    loop = asyncio.get_running_loop()

    def stage(name: str) -> None:  # called from the loading thread
        if phase is not None:
            loop.call_soon_threadsafe(setattr, phase, "text", f"loading {model}: {name}")

    try:
        return await model_load.load_model(cfg, model, stage)
    except ModelLoadError as exc:
        raise StartupError(str(exc)) from None


async def load_devices(cfg: ServeConfig, model: str, phase: _Phase) -> tuple[list[device_group.Loaded], Any]:
    """`--devices`: the model on each device, in turn."""
    loop = asyncio.get_running_loop()

    def stage(text: str) -> None:  # called from the loading thread
        loop.call_soon_threadsafe(setattr, phase, "text", f"loading {model}: {text}")

    try:
        return await device_group.load_devices(cfg, model, stage)
    except device_group.DevicesRefused as exc:
        raise StartupError(str(exc)) from None
    except ModelLoadError as exc:
        raise StartupError(str(exc)) from None


@dataclass
class _Phase:
    """What the service manager is told we are doing; the watchdog pinger reports it."""

    text: str = "starting"
    door: FrontDoor | None = None
    devices: list[tuple[str, DeviceActor]] = field(default_factory=list)  # with their labels

    def describe(self) -> str:
        if self.door is not None and self.text == "serving":
            return f"serving {self.door.live_requests} request(s){self._residency()}"
        return self.text

    def _residency(self) -> str:
        """Where keep-alive has the model away: with several devices, on which."""
        loading = [label for label, d in self.devices if d.residency is Residency.LOADING]
        idle = [label for label, d in self.devices if d.residency in (Residency.UNLOADING, Residency.UNLOADED)]
        if len(self.devices) == 1:
            return ", model loading again" if loading else ", model unloaded (idle)" if idle else ""
        text = f", model loading again on {', '.join(loading)}" if loading else ""
        return text + (f", model unloaded (idle) on {', '.join(idle)}" if idle else "")

    def starting_load(self) -> bool:
        """Still in the start-up load, which systemd's start timeout must not cut short."""
        return self.door is None and self.text.startswith("loading")


async def run(cfg: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT. Returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    notifier = Notifier.from_env()
    phase = _Phase()

    async with AsyncExitStack() as outer:
        outer.callback(notifier.close)
        # Pinging starts before the load: the loop is free while the model loads in a
        # worker thread, and a loop wedged even then should be restarted.
        pinger = asyncio.create_task(
            ping_watchdog(notifier, phase.describe, extending=phase.starting_load), name="sd-watchdog"
        )
        outer.push_async_callback(_cancel_task, pinger)

        endpoint = ep.to_zmq(cfg.socket)
        try:
            group = ep.resolve_group(cfg.socket_group)
            lock_fd = claim_endpoint(endpoint, group)
            keys = curve_auth.listen_security(cfg, endpoint)  # before the load: a refusal is quick
        except (ep.EndpointError, curve_auth.ListenRefused) as exc:
            raise StartupError(str(exc)) from None
        if lock_fd is not None:
            outer.callback(os.close, lock_fd)  # last out: after the socket file is removed
        resolved = resolve_model(cfg)
        model = resolved.source
        backend, why = choose_backend(cfg, model)
        if why:
            log.info("%s", why)
        cfg = replace(cfg, backend=backend, draft_model=draft_source(cfg, backend))  # or DraftRefused
        log.info(
            "loading %s (backend %s, device %s, dtype %s, keep-alive %s)",
            model,
            cfg.backend,
            cfg.device,
            cfg.dtype,
            "forever" if cfg.keep_alive_s is None else f"{cfg.keep_alive_s:g}s",
        )
        phase.text = f"loading {model}"
        notifier.status(phase.text, extend_timeout_s=EXTEND_TIMEOUT_S)
        if device_group.several(cfg):
            loaded, tokenizer = await load_devices(cfg, model, phase)
            if len(loaded) == 1:  # one candidate, and it loaded: the one-device daemon, no placer
                return await _serve(cfg, stop, notifier, phase, endpoint, keys, resolved, loaded.pop().backend, tokenizer)
            return await _serve(cfg, stop, notifier, phase, endpoint, keys, resolved, None, tokenizer, loaded)
        # Unpacked straight into the call: no name here may keep the backend alive once
        # keep-alive unloads it.
        return await _serve(
            cfg, stop, notifier, phase, endpoint, keys, resolved, *await load_model(cfg, model, phase)
        )


async def _serve(
    cfg: ServeConfig,
    stop: asyncio.Event,
    notifier: Notifier,
    phase: _Phase,
    endpoint: str,
    keys: curve_auth.ServerKeys | None,
    model: ResolvedModel,
    backend: DeviceBackend | None,
    tokenizer: Any,
    loaded: list[device_group.Loaded] | None = None,
) -> int:
    if backend is not None:
        info = backend.info
        labels = [info.device]
    else:
        assert loaded is not None
        on = [r.backend for r in loaded if r.backend is not None]
        labels = [b.info.device for b in on]
        info = replace(on[0].info, device=device_group.describe(labels))
        del on  # the device actors must be the backends' one owners
    if model.ollama is not None:  # its blob is named for a digest: clients see Ollama's name
        info = replace(info, model=model.ollama.name)
    eos_ids = set(info.eos_ids) | end_of_turn_ids(tokenizer)
    vocab = ConstraintVocab(tokenizer, sorted(eos_ids), info.vocab_size)

    async with AsyncExitStack() as stack:
        ctx = zmq.asyncio.Context()
        stack.callback(_term_context, ctx)
        allow_list = None if keys is None else curve_auth.AllowList(keys.allow_dir)
        if allow_list is not None:
            auth = curve_auth.start_authenticator(ctx, allow_list)
            stack.callback(auth.stop)  # type: ignore[attr-defined]
        bus = Bus(ctx, f"axchat-{os.getpid()}")
        supervisor = DaemonSupervisor(bus) if loaded is None else device_group.GroupSupervisor(bus)
        stack.callback(supervisor.close)

        # Consumers first, so nothing is ever sent to an inbox that does not exist;
        # the front door last, so no client is served before the chain is whole.
        if backend is not None:
            device = device_group.device_actor(bus, supervisor, cfg, model.source, backend, vocab=vocab)
            del backend  # the device actor is its one owner, so that unloading frees it
            devices: list[Actor] = [device]
            device_actors, max_running = [device], device.max_running
        else:
            assert loaded is not None
            group = device_group.build(bus, supervisor, cfg, model.source, loaded, vocab)
            del loaded  # emptied of backends: the device actors own them
            devices, device_actors, max_running = group.actors, group.devices, group.max_running
        # The reply stage hears the devices' readings as messages, never holding a
        # backend (even a bound method of it would keep an unloaded model in memory).
        reply_stage = ReplyActor(bus, supervisor, info, max_queued=cfg.max_queued)
        sampler = SamplerActor(bus, supervisor)
        tok = TokenizerActor(
            bus,
            supervisor,
            tokenizer,
            context_length=info.context_length,
            eos_ids=sorted(eos_ids),
            reply_reserve=info.reply_reserve,
            vocab=vocab,
        )
        try:
            door = FrontDoor(
                bus,
                supervisor,
                endpoint=endpoint,
                info=info,
                model_aliases=(model.source, *model.aliases),
                max_frame_bytes=cfg.max_frame_bytes,
                max_live=max_running + cfg.max_queued,
                max_live_per_client=cfg.max_per_client,
                max_live_per_connection=cfg.max_per_connection or max(1, (max_running + cfg.max_queued) * 3 // 4),
                client_timeout_s=cfg.client_timeout_s,
                curve_server=None if keys is None else (keys.public, keys.secret),
                length_floor=tok.length_floor,
                allow_list=allow_list,
                defaults=request_defaults.for_model(model),
            )
        except zmq.ZMQError as exc:
            for made in (reply_stage, sampler, *devices, tok):
                made.discard()
            raise StartupError(f"cannot listen on {ep.describe(endpoint)}: {exc}") from None
        path = ep.ipc_path(endpoint)
        if path is not None:
            ep.restrict_socket_file(path, cfg.socket_mode, ep.resolve_group(cfg.socket_group))
        actors: list[Actor] = [reply_stage, sampler, *devices, tok, door]
        tasks: list[asyncio.Task[None]] = []
        for actor in actors:
            task = asyncio.create_task(actor.run(), name=f"actor-{actor.name}")
            task.add_done_callback(functools.partial(supervisor.actor_exited, actor))
            tasks.append(task)
        # Reverse order on the way out, whatever happens below.
        stack.push_async_callback(_close_actors, bus, supervisor, list(zip(actors, tasks, strict=True))[::-1])
        stack.callback(_unlink_socket, endpoint)

        log.info(
            "ready: serving %s on %s (%s, %s, %s, %d threads, context %d)",
            info.model,
            ep.describe(door.bound_endpoint),
            info.backend,
            info.device,
            info.dtype,
            info.threads,
            info.context_length,
        )
        phase.door, phase.text = door, "serving"
        phase.devices = list(zip(labels, device_actors, strict=True))
        notifier.ready(f"serving {info.model}" + (f" on {info.device}" if len(labels) > 1 else ""))
        stopper = asyncio.create_task(stop.wait())
        waiters: list[asyncio.Future[Any]] = [stopper, supervisor.fatal]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if supervisor.fatal.done():
            log.critical("stopping after a fatal actor failure")
            notifier.stopping("stopping after a fatal actor failure")
            return 1
        phase.text = "draining"
        notifier.stopping(f"draining {door.live_requests} request(s)")
        await _drain(door, cfg.drain_timeout_s)
    log.info("stopped")
    return 0


async def _cancel_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.error("watchdog pinger failed", exc_info=task.exception())


async def _drain(door: FrontDoor, timeout_s: float) -> None:
    door.begin_drain()
    log.info("draining: %d request(s) in flight, up to %.1fs", door.live_requests, timeout_s)
    try:
        await asyncio.wait_for(door.idle.wait(), timeout_s)
        return
    except TimeoutError:
        pass
    log.info("drain timeout: cancelling %d request(s)", door.live_requests)
    await door.cancel_all()
    try:
        await asyncio.wait_for(door.idle.wait(), CANCEL_GRACE_S)
    except TimeoutError:
        log.warning("%d request(s) did not finish cancelling; their clients get no final frame", door.live_requests)


async def _close_actors(bus: Bus, supervisor: DaemonSupervisor, ordered: list[tuple[Actor, asyncio.Task[None]]]) -> None:
    supervisor.stopping = True
    errors: list[BaseException] = []
    for actor, task in ordered:
        if not task.done():
            await send_close(bus, actor.name)
            done, _ = await asyncio.wait([task], timeout=ACTOR_CLOSE_TIMEOUT_S)
            if not done:
                log.warning("actor %s did not close in %.0fs; cancelling it", actor.name, ACTOR_CLOSE_TIMEOUT_S)
                task.cancel()
                await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            errors.append(task.exception())  # type: ignore[arg-type]
    for exc in errors:
        log.error("actor failed while closing", exc_info=exc)


def _term_context(ctx: zmq.asyncio.Context) -> None:
    # Every socket is closed by its owner before this runs; a context that will not
    # terminate means one leaked, and we say so rather than hang.
    import threading

    t = threading.Thread(target=ctx.term, daemon=True)
    t.start()
    t.join(CONTEXT_TERM_TIMEOUT_S)
    if t.is_alive():
        log.error("ZeroMQ context did not terminate in %.0fs: a socket was left open", CONTEXT_TERM_TIMEOUT_S)


def _unlink_socket(endpoint: str) -> None:
    path = ep.ipc_path(endpoint)
    if path is None:
        return
    try:
        if ep.socket_file_exists(path):
            path.unlink(missing_ok=True)
    except ep.EndpointError as exc:
        log.warning("%s", exc)
