"""The reply stage, the last stop before the front door: it turns what the actors say
about a request (text, queue place, reload progress, its end, a refusal, a status
filled in on the way) into protocol frames for the client, in the order they came."""

from __future__ import annotations

from axchat.actors import messages as m
from axchat.actors.backends.base import BackendInfo
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.status import DeviceSection, status_reply
from axchat.actors.telemetry import Telemetry
from axchat.protocol import v1


class ReplyActor(Actor):
    name = "reply"

    def __init__(
        self,
        bus: Bus,
        supervisor: Supervisor,
        info: BackendInfo,
        *,
        max_queued: int = 0,
    ) -> None:
        super().__init__(bus, supervisor)
        self._model = info.model
        self.telemetry = Telemetry(info, max_queued=max_queued)

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.TextOut):
            await self._out(msg.rid, v1.Delta(text=msg.text, token_ids=msg.token_ids, tool_calls=msg.tool_calls), final=False)
        elif isinstance(msg, m.QueuePosition):
            await self._out(msg.rid, v1.Queued(position=msg.position), final=False)
        elif isinstance(msg, m.Loading):
            body = v1.Loading(model=self._model, stage=msg.stage, elapsed_s=msg.elapsed_s, last_load_s=msg.last_load_s)
            await self._out(msg.rid, body, final=False)
        elif isinstance(msg, m.Finished):
            await self._finished(msg)
        elif isinstance(msg, m.Rejected):
            self.telemetry.rejected(msg)
            await self._out(msg.rid, msg.error.as_error(), final=True)
        elif isinstance(msg, m.StatusQuery):
            reply = status_reply(msg.state, msg.model, msg.device or DeviceSection(), self.telemetry.totals())
            await self._out(msg.rid, reply, final=True)
        elif isinstance(msg, m.DeviceReading):
            self.telemetry.device_reading(msg)
        else:
            raise TypeError(f"reply stage got unexpected {type(msg).__name__}")

    async def _out(self, rid: int, body: v1.DaemonMessage, *, final: bool) -> None:
        await self.send("frontdoor", m.Outbound(rid=rid, body=v1.encode_body(body), final=final))

    async def _finished(self, msg: m.Finished) -> None:
        stats = self.telemetry.finished(msg)
        usage = v1.Usage(
            prompt_tokens=msg.prompt_tokens,
            completion_tokens=msg.completion_tokens,
            cached_tokens=msg.cached_tokens,
        )
        error = msg.error.as_done_error() if msg.error is not None else None
        done = v1.Done(
            finish_reason=msg.reason, usage=usage, stats=stats, error=error,
            trimmed_messages=msg.trimmed_messages, tool_calls=msg.tool_calls,
        )
        await self._out(msg.rid, done, final=True)
