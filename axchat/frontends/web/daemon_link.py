"""The bridge's one connection to the daemon: an AsyncClient shared by every HTTP
request (one DEALER socket carries any number of concurrent generates)."""

from __future__ import annotations

from axchat import connection
from axchat.connection import DaemonUnavailable, RequestFailed
from axchat.frontends.web.openai_errors import ApiError, daemon_unavailable, from_error
from axchat.protocol import v1


class DaemonLink:
    def __init__(self, socket: str | None, *, connect_timeout_s: float = 3.0) -> None:
        self.client = connection.open_async(socket, connect_timeout_s=connect_timeout_s)

    async def close(self) -> None:
        await self.client.close()

    async def welcome(self) -> v1.Welcome:
        """A fresh hello, not a cached one: it costs a millisecond and proves the daemon
        is there now, so a dead daemon is a quick 503 instead of a generate that stalls."""
        try:
            return await self.client.hello()
        except DaemonUnavailable as exc:
            raise daemon_unavailable(str(exc)) from None
        except RequestFailed as exc:
            raise _api_error(exc) from None

    async def status(self) -> v1.StatusReply:
        try:
            return await connection.status_now(self.client)
        except DaemonUnavailable as exc:
            raise daemon_unavailable(str(exc)) from None
        except RequestFailed as exc:
            raise _api_error(exc) from None


def _api_error(exc: RequestFailed) -> ApiError:
    return from_error(exc.error)
