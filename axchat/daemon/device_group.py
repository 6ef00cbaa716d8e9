"""Several devices in one daemon (`--devices N|all`): which devices, loading the model
on each, and the actors that drive them (a device actor each, the placer in front).

`--aipu-device` (or $AXELERA_DEVICE_SELECTOR) keeps naming the candidate cards, tried in
order; `--devices` says how many of them to drive. CUDA: cuda:0 up. The CPU is one device.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from axchat.actors import messages as m
from axchat.actors.backends import DeviceBackend, ModelLoadError
from axchat.actors.device.actor import DeviceActor
from axchat.actors.device.peers import Peers
from axchat.actors.mailbox import Actor, Bus
from axchat.actors.placer import PLACER_NAME, DeviceSpec, PlacerActor, device_name
from axchat.actors.token_mask import ConstraintVocab
from axchat.daemon import model_load
from axchat.daemon.backend_choice import cuda_present
from axchat.daemon.config import ServeConfig
from axchat.daemon.supervisor import DaemonSupervisor

log = logging.getLogger("axchat.daemon")


class DevicesRefused(Exception):
    """`--devices` asks for what this backend or machine cannot do; one line."""


def several(cfg: ServeConfig) -> bool:
    return cfg.devices != 1


def candidates(cfg: ServeConfig) -> list[str]:
    """The devices `--devices` may draw from, in order (names the loader accepts)."""
    if cfg.backend == "aipu":
        return _aipu_candidates(cfg)
    if cfg.backend == "torch" and (cfg.device.startswith("cuda") or (cfg.device == "auto" and cuda_present())):
        # Untested here (no GPU on the build host): one torch backend per GPU.
        from axchat.actors.backends.torch_engine import missing_extra

        if (why := missing_extra(f"--devices {cfg.devices} on GPUs")) is not None:
            raise DevicesRefused(why)
        import torch

        if cfg.device not in ("auto", "cuda", "cuda:0"):
            raise DevicesRefused(f"--devices {cfg.devices} counts GPUs from cuda:0; give --device cuda, not {cfg.device}")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    raise DevicesRefused(
        f"--devices {cfg.devices}: the CPU is one device ({cfg.backend} backend); several devices need "
        "--device aipu (Metis cards) or --device cuda (GPUs)"
    )


def _aipu_candidates(cfg: ServeConfig) -> list[str]:
    from axchat.actors.backends.aipu import runtime as rt
    from axchat.actors.backends.aipu.backend import RUNTIME_ENV
    from axchat.actors.backends.aipu.cards import select_cards

    kind = cfg.aipu_runtime or os.environ.get(RUNTIME_ENV) or "real"
    sdk = rt.load_runtime(kind)
    try:
        return [card.name for card in select_cards(sdk.list_devices(), cfg.aipu_device)]
    finally:
        sdk.close()


def _on(cfg: ServeConfig, device: str) -> ServeConfig:
    """`cfg` pinned to one device: a card by name, or one GPU."""
    return replace(cfg, aipu_device=device) if cfg.backend == "aipu" else replace(cfg, device=device)


@dataclass
class Loaded:
    label: str
    backend: DeviceBackend | None
    reason: str = ""  # why it did not load


async def load_devices(
    cfg: ServeConfig, model: str, progress: Callable[[str], None]
) -> tuple[list[Loaded], Any]:
    """The model on up to `--devices` of the candidates, in order, and the tokenizer.
    A candidate that fails (busy, broken) is logged and kept for `status`; the others go
    on. Raises ModelLoadError when none loads."""
    names = candidates(cfg)
    count = len(names) if cfg.devices == "all" else int(cfg.devices)
    if count > len(names):
        log.warning("--devices %s: only %d candidate device(s): %s", cfg.devices, len(names), ", ".join(names))
    results: list[Loaded] = []
    loaded = 0
    for label in names:
        if loaded == count:
            break
        progress(f"{label}: config")
        try:
            backend = await model_load.in_own_thread(
                model_load.load_device,
                cfg.backend,
                model,
                model_load.load_options(_on(cfg, label)),
                lambda stage, _l=label: progress(f"{_l}: {stage}"),
            )
        except ModelLoadError as exc:
            log.warning("%s left out: %s", label, exc)
            results.append(Loaded(label, None, str(exc)))
            continue
        results.append(Loaded(label, backend))
        loaded += 1
    if loaded == 0:
        raise ModelLoadError("no device could load the model: " + "; ".join(f"{r.label}: {r.reason}" for r in results))
    if loaded < count:
        log.warning("--devices %s: serving on %d device(s)", cfg.devices, loaded)
    first = next(r.backend for r in results if r.backend is not None)
    from axchat.actors.tokenizer import load_tokenizer

    tokenizer = await model_load.in_own_thread(load_tokenizer, first.info.tokenizer or model, first.info.vocab_gguf)
    return results, tokenizer


def describe(labels: list[str]) -> str:
    """Several devices in one phrase, as `status`, the ready line and systemd show them."""
    return f"{len(labels)} devices: {', '.join(labels)}"


@dataclass
class DeviceGroup:
    """The actors driving the devices, in start order (devices, then the placer)."""

    actors: list[Actor]
    devices: list[DeviceActor]
    max_running: int


def device_actor(
    bus: Bus, supervisor: DaemonSupervisor, cfg: ServeConfig, model: str, backend: DeviceBackend, **placement: Any
) -> DeviceActor:
    """The device actor owning `backend`; a keep-alive reload loads it again with `cfg`
    (pinned to this device), keeping what the start-up load measured."""
    return DeviceActor(
        bus,
        supervisor,
        backend,
        max_running=cfg.max_running,
        keep_alive_s=cfg.keep_alive_s,
        speculate=cfg.speculate,
        loader=model_load.device_loader(cfg, model, backend.info),
        **placement,
    )


def build(
    bus: Bus, supervisor: DaemonSupervisor, cfg: ServeConfig, model: str, loaded: list[Loaded], vocab: ConstraintVocab | None = None
) -> DeviceGroup:
    """A device actor per loaded device and the placer in front of them. Takes the
    backends out of `loaded`: each device actor must be its backend's one owner."""
    devices: list[DeviceActor] = []
    specs: list[DeviceSpec] = []
    for item in loaded:
        if item.backend is None:
            specs.append(DeviceSpec(name="", label=item.label, down_reason=item.reason))
            continue
        backend, item.backend = item.backend, None
        device = device_actor(
            bus,
            supervisor,
            _on(cfg, item.label),
            model,
            backend,
            name=device_name(len(devices)),
            peers=Peers(status=PLACER_NAME, ended=PLACER_NAME, residency=PLACER_NAME),
            vocab=vocab,
        )
        del backend
        devices.append(device)
        specs.append(DeviceSpec(device.name, device.backend.info.device, device.max_running))  # type: ignore[union-attr]
    placer = PlacerActor(bus, supervisor, specs)
    if isinstance(supervisor, GroupSupervisor):
        supervisor.devices = {d.name for d in devices}
    return DeviceGroup([*devices, placer], devices, sum(d.max_running for d in devices))


class GroupSupervisor(DaemonSupervisor):
    """As the daemon's supervisor, but a device actor that loses its step loop or stops
    takes that device out of placement (the placer fails what it held) instead of
    stopping the daemon; the placer decides when the last one going is fatal."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus)
        self.devices: set[str] = set()

    def on_handler_error(self, actor: Actor, msg: m.ActorMessage, exc: BaseException) -> None:
        if actor.name in self.devices and getattr(msg, "rid", None) is None:
            self._device_down(actor.name, f"{type(exc).__name__}: {exc}", exc)
            return
        super().on_handler_error(actor, msg, exc)

    def on_task_error(self, actor: Actor, task_name: str, exc: BaseException) -> None:
        if actor.name in self.devices:
            self._device_down(actor.name, f"lost its task {task_name}: {type(exc).__name__}: {exc}", exc)
            return
        super().on_task_error(actor, task_name, exc)

    def actor_exited(self, actor: Actor, task: asyncio.Task[None]) -> None:
        if actor.name in self.devices and not self.stopping:
            exc = (None if task.cancelled() else task.exception()) or RuntimeError(f"actor {actor.name} stopped")
            self._device_down(actor.name, f"stopped: {type(exc).__name__}: {exc}", exc)
            return
        super().actor_exited(actor, task)

    def _device_down(self, name: str, reason: str, exc: BaseException) -> None:
        if self.stopping:
            return
        log.error("device actor %s failed: %s", name, reason, exc_info=exc)
        task = asyncio.get_running_loop().create_task(
            self._outboxes.send(PLACER_NAME, m.DeviceDown(name=name, reason=reason))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
