"""The supervisor: hears every actor failure. A failure tied to one request fails
that request alone; anything else is fatal, and the daemon exits for its service
manager to restart it rather than limp on wedged."""

from __future__ import annotations

import asyncio
import logging

from axchat.actors import messages as m
from axchat.actors.mailbox import Actor, Bus, Outboxes

log = logging.getLogger(__name__)


class DaemonSupervisor:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.fatal: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._outboxes = Outboxes(bus)
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False  # set by the server before it closes actors on purpose

    def on_handler_error(self, actor: Actor, msg: m.ActorMessage, exc: BaseException) -> None:
        rid = getattr(msg, "rid", None)
        if rid is None:
            log.critical("actor %s failed outside any request", actor.name, exc_info=exc)
            if not self.fatal.done():
                self.fatal.set_result(exc)
            return
        log.error("actor %s failed on %s for request %d", actor.name, type(msg).__name__, rid, exc_info=exc)
        error = m.Failure(code="internal", message=f"{actor.name} failed: {type(exc).__name__}: {exc}")
        task = asyncio.get_running_loop().create_task(self._fail_request(rid, error))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_task_error(self, actor: Actor, task_name: str, exc: BaseException) -> None:
        """An actor's reader or step loop is gone: the actor can no longer do its job."""
        self._fatal(f"actor {actor.name} lost its task {task_name}", exc)

    def actor_exited(self, actor: Actor, task: asyncio.Task[None]) -> None:
        """Done-callback for actor tasks: an actor that stops on its own is fatal."""
        exc = (None if task.cancelled() else task.exception()) or RuntimeError(f"actor {actor.name} stopped")
        self._fatal(f"actor {actor.name} exited", exc)

    def _fatal(self, what: str, exc: BaseException) -> None:
        if self.stopping or self.fatal.done():
            return  # stopping on purpose, or already on the way out
        log.critical("%s", what, exc_info=exc)
        self.fatal.set_result(exc)

    async def _fail_request(self, rid: int, error: m.Failure) -> None:
        # The client hears first; then the device drops the sequence if it holds one.
        await self._outboxes.send("frontdoor", m.Abort(rid=rid, error=error))
        await self._outboxes.send("device", m.CancelRequest(rid=rid, reason="error"))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._outboxes.close()
