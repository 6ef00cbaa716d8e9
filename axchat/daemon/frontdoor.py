"""The front door: the ROUTER socket clients talk to. It checks every frame, answers
bad ones with a typed error, and routes good requests into the actor chain."""

from __future__ import annotations

import asyncio
import errno
import logging
import time

import msgspec
import zmq

from axchat import __version__
from axchat.actors import messages as m
from axchat.actors import status
from axchat.actors.backends.base import BackendInfo
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.prompt_fit import LengthFloor
from axchat.daemon.admission import Admission, Live
from axchat.daemon.curve_auth import AllowList
from axchat.daemon.generate_checks import GenerateChecks
from axchat.daemon.peer_watch import PeerWatch
from axchat.daemon.request_defaults import NO_DEFAULTS, RequestDefaults
from axchat.protocol import v1
from axchat.protocol.field_path import field_path
from axchat.sizes import human_bytes
from axchat.zmq_sockets import make_socket

log = logging.getLogger(__name__)

# Frames beyond this many times the limit make ZeroMQ drop the connection outright,
# so a hostile client cannot make us buffer gigabytes just to refuse them.
HARD_LIMIT_FACTOR = 32
# Replies queued for one slow client before we treat it as gone.
CLIENT_SNDHWM = 10_000
# A hint, not a promise: long enough for a short request to finish somewhere.
BUSY_RETRY_AFTER_S = 1.0


# Why a peer whose key left the allow-list is no longer served.
REVOKED_TEXT = "this client's key is no longer on the daemon's allow-list (revoked with `axchat keys revoke`?)"


# Client-chosen strings (request ids, error texts quoting a bad field) are cut to this
# in logs and error replies: ten 1 MB type tags once grew the log by 10 MB.
MAX_ECHO_CHARS = 200
NO_FLOOR = LengthFloor(0)  # no cheap bound: every request goes to the tokenizer


def _short(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def peer_label(identity: bytes) -> str:
    """A short name for a connection in logs and `status`. ZeroMQ's routing ids are a
    zero byte then a counter, so their first digits are alike for every peer; the
    last eight differ."""
    return identity.hex()[-8:]


class FrontDoor(Actor):
    name = "frontdoor"

    def __init__(
        self,
        bus: Bus,
        supervisor: Supervisor,
        *,
        endpoint: str,
        info: BackendInfo,
        model_aliases: tuple[str, ...] = (),
        max_frame_bytes: int = v1.DEFAULT_MAX_FRAME_BYTES,
        max_live: int = 1 << 30,
        max_live_per_client: int = 1 << 30,
        max_live_per_connection: int = 1 << 30,
        client_timeout_s: float = 0.0,
        curve_server: tuple[bytes, bytes] | None = None,
        length_floor: LengthFloor = NO_FLOOR,
        allow_list: AllowList | None = None,
        defaults: RequestDefaults = NO_DEFAULTS,
    ) -> None:
        super().__init__(bus, supervisor)
        self._defaults = defaults
        self._checks = GenerateChecks(info, {info.model, *model_aliases}, length_floor)
        self._admission = Admission(
            max_live=max_live, max_per_client=max_live_per_client, max_per_connection=max_live_per_connection
        )
        # A CURVE socket's allow-list, asked again for every frame: a key revoked while
        # its connection is open is cut off at that connection's next frame.
        self._allow_list = allow_list
        self._liveness: asyncio.Task[None] | None = None
        self._info = info
        self._facts = status.ModelFacts.of(info)  # its section of `status`, and `hello`'s answer
        self._max_frame = max_frame_bytes
        self._router = make_socket(
            bus.ctx,
            zmq.ROUTER,
            bind=endpoint,
            hwm=CLIENT_SNDHWM,
            max_msg_bytes=max_frame_bytes * HARD_LIMIT_FACTOR,
            router_mandatory=True,
            curve_server=curve_server,
        )
        # Liveness on the data path: a client with live requests must send something
        # (a `ping` will do) at least `client_timeout_s` often; a silent one is gone.
        self._peers = PeerWatch(
            self._router,
            timeout_s=client_timeout_s,
            probe=self._probe,
            gone=self._client_gone,
            live_peers=lambda: {live.identity for live in self._admission.live.values()},
        )
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.daemon_state = v1.DaemonState.SERVING  # not `state`: that is the mailbox's own
        self.idle = asyncio.Event()
        self.idle.set()

    async def on_start(self) -> None:
        self._reader = self.run_in_background(self._read_clients(), "frontdoor-reader")
        self._watcher = self.run_in_background(self._peers.watch_disconnects(), "frontdoor-disconnects")
        if self._peers.timeout_s > 0:
            self._liveness = self.run_in_background(self._peers.expire_silent(), "frontdoor-liveness")

    async def on_close(self) -> None:
        tasks = [t for t in (self._reader, self._watcher, self._liveness) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._peers.close()
        self._router.close(linger=0)

    def begin_drain(self) -> None:
        self.daemon_state = v1.DaemonState.DRAINING

    @property
    def draining(self) -> bool:
        return self.daemon_state is v1.DaemonState.DRAINING

    async def cancel_all(self) -> None:
        for rid, live in list(self._admission.live.items()):
            if live.kind == "generate":
                await self.send("tokenizer", m.CancelRequest(rid=rid))

    @property
    def bound_endpoint(self) -> str:
        """The endpoint as bound: a `tcp://host:*` request resolved to its real port."""
        return self._router.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def live_requests(self) -> int:
        return len(self._admission.live)

    # ------------------------------------------------------------ client -> actors

    async def _read_clients(self) -> None:
        while True:
            parts = await self._router.recv_multipart(copy=False)
            fd = parts[0].get(zmq.SRCFD)
            identity = parts[0].bytes
            allowed = self._allow_list is None or self._still_allowed(identity, parts[0])
            # Views, not copies: a large body is decoded straight from ZeroMQ's buffer.
            frames = [part.buffer for part in parts[1:]]
            del parts
            self._peers.seen(identity, fd)
            try:
                await (self._dispatch(identity, frames) if allowed else self._cut_off(identity, frames))
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one client's frame stop the door
                log.exception("peer %s: unexpected failure handling a frame", peer_label(identity))
                await self._reply(identity, "", v1.Error(code="internal", message="internal error handling frame"))
            del frames

    def _still_allowed(self, identity: bytes, frame: zmq.Frame) -> bool:
        """Whether the CURVE key this frame came with (its `User-Id`, which our ZAP
        handler sets to the key) is still on the allow-list."""
        assert self._allow_list is not None
        try:
            key = str(frame.get("User-Id"))
        except zmq.ZMQError:  # no user id: not a peer our handler let in
            key = ""
        return self._allow_list.admits(key.encode(), f"a request of peer {peer_label(identity)}")

    async def _cut_off(self, identity: bytes, frames: list[memoryview]) -> None:
        """A peer whose key left the allow-list: its live requests end with `forbidden`,
        and so does this frame. Logged by the allow-list, at most once a while per key."""
        ended = await self._end_requests(identity)
        for live in ended:
            await self._reply(identity, live.client_id, v1.Error(code="forbidden", message=REVOKED_TEXT))
        client_id = self._envelope_id(frames)
        if client_id not in {live.client_id for live in ended}:
            await self._reply(identity, client_id, v1.Error(code="forbidden", message=REVOKED_TEXT))

    def _envelope_id(self, frames: list[memoryview]) -> str:
        """The request id of a frame that gets no further look, or "" if it has none."""
        if len(frames) != 2 or len(frames[0]) > self._max_frame:
            return ""
        try:
            return v1.decode_envelope(frames[0]).id
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return ""

    async def _dispatch(self, identity: bytes, frames: list[memoryview]) -> None:
        if frames == [b""]:
            return await self._client_gone(identity, "disconnected")
        if len(frames) != 2:
            return await self._reject(identity, "", "bad_frame", f"expected 2 frames [envelope, body], got {len(frames)}")
        raw_env, raw_body = frames
        too_big = max(len(raw_env), len(raw_body)) > self._max_frame
        try:
            env = v1.decode_envelope(raw_env) if len(raw_env) <= self._max_frame else None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return await self._reject(identity, "", "bad_frame", f"envelope: {exc}")
        except RecursionError:
            return await self._reject(identity, "", "bad_frame", "envelope: nested too deeply")
        rid_label = env.id if env is not None else ""
        if too_big:
            size = max(len(raw_env), len(raw_body))
            return await self._reject(
                identity, rid_label, "frame_too_large", f"the request is {human_bytes(size)} ({size} bytes); this daemon accepts at most "
                f"{human_bytes(self._max_frame)} ({self._max_frame} bytes): a shorter prompt or history fits, or raise "
                "the daemon's --max-frame-bytes (max_frame_bytes in its config)",
            )
        assert env is not None
        if env.v != v1.PROTOCOL_MAJOR:
            return await self._reject(
                identity,
                env.id,
                "unsupported_version",
                f"this daemon speaks protocol {v1.PROTOCOL_MAJOR}.x; the client sent version {env.v}",
            )
        if len(env.id) > v1.MAX_ID_CHARS:
            # Refused once, not served: every reply frame of a request repeats its id.
            text = f"the request id is {len(env.id)} characters; the limit is {v1.MAX_ID_CHARS}"
            return await self._reject(identity, env.id, "invalid_field", text, param="id")
        too_long = self._checks.encoded_refusal(raw_body)
        if too_long is not None:
            return await self._reject(identity, env.id, too_long.code, too_long.message, param=too_long.param)
        try:
            body = v1.decode_client_body(raw_body)
        except msgspec.ValidationError as exc:
            param = field_path(exc)
            # The tag is the message's type: a `type` msgspec cannot match (a name this
            # version lacks, or not a str) is a type we do not know, any other field a bad one.
            code: v1.ErrorCode = "unknown_type" if param == "type" else "invalid_field"
            return await self._reject(identity, env.id, code, f"body: {exc}", param=param)
        except msgspec.DecodeError as exc:
            return await self._reject(identity, env.id, "bad_frame", f"body: {exc}")
        except RecursionError:  # msgspec's guard against a stack overflow
            return await self._reject(identity, env.id, "bad_frame", "body: nested too deeply")

        if isinstance(body, v1.Generate):
            await self._generate(identity, env.id, body)
        elif isinstance(body, v1.Cancel):
            # No reply of its own: the generate's `done` says how it ended. A cancel
            # that loses the race with `done` is normal and silently ignored.
            rid = self._admission.by_client.get((identity, env.id))
            if rid is not None:
                await self.send("tokenizer", m.CancelRequest(rid=rid))
        elif isinstance(body, v1.Status):
            if await self._admit(identity, env.id, "status"):
                rid = self._register(identity, env.id, "status")
                await self.send("device", m.StatusQuery(rid=rid, state=self.daemon_state, model=self._facts))
        elif isinstance(body, v1.Hello):
            await self._hello(identity, env.id, body)
        elif isinstance(body, v1.Ping):
            await self._reply(identity, env.id, v1.Pong())

    async def _hello(self, identity: bytes, client_id: str, hello: v1.Hello) -> None:
        major = hello.protocol.split(".", 1)[0]
        if major != str(v1.PROTOCOL_MAJOR):
            return await self._reject(
                identity,
                client_id,
                "unsupported_version",
                f"this daemon speaks protocol {v1.PROTOCOL_VERSION}; the client speaks {hello.protocol}",
            )
        welcome = status.welcome(
            self._facts,
            protocol=v1.PROTOCOL_VERSION,
            server_version=__version__,
            max_frame_bytes=self._max_frame,
            client_timeout_s=self._peers.timeout_s,
        )
        await self._reply(identity, client_id, welcome)

    async def _generate(self, identity: bytes, client_id: str, gen: v1.Generate) -> None:
        gen = self._defaults.apply(gen)
        problem = self._checks.refusal(gen)
        if problem is not None:
            return await self._reject(identity, client_id, problem.code, problem.message, param=problem.param)
        if self.draining:
            return await self._reject(identity, client_id, "shutting_down", "the daemon is shutting down")
        if (identity, client_id) in self._admission.by_client:
            return await self._reject(
                identity, client_id, "duplicate_request", f"request id {_short(client_id)!r} is already running"
            )
        if not await self._admit(identity, client_id, "generate", gen.user):
            return
        rid = self._register(identity, client_id, "generate", gen.user)
        await self.send(
            "tokenizer",
            m.Encode(
                rid=rid,
                label=f"{_short(client_id, 64)}@{peer_label(identity)}",
                client=m.client_key(identity.hex(), gen.user),
                messages=gen.messages,
                prompt=gen.prompt,
                sampling=gen.sampling,
                received_ns=time.monotonic_ns(),
                cpu_ns=time.process_time_ns(),
                constraint=gen.constraint,
            ),
        )

    async def _admit(self, identity: bytes, client_id: str, kind: str, user: str = "") -> bool:
        """Whether a request of `kind` may go on; if not, the client has heard `busy`."""
        busy = self._admission.over_limit(identity, kind, user)
        if busy is None:
            return True
        log.info("peer %s request %r: busy: %s", peer_label(identity), _short(client_id), busy)
        await self._reply(identity, client_id, v1.Error(code="busy", message=busy, retry_after_s=BUSY_RETRY_AFTER_S))
        return False

    def _register(self, identity: bytes, client_id: str, kind: str, user: str = "") -> int:
        self.idle.clear()
        return self._admission.register(identity, client_id, kind, user)

    def _forget(self, rid: int) -> Live | None:
        live = self._admission.forget(rid)
        if not self._admission.live:
            self.idle.set()
        return live

    # ------------------------------------------------------------ actors -> client

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.Outbound):
            live = self._admission.live.get(msg.rid)
            if live is None:
                return  # its client vanished or it was aborted
            if msg.final:
                self._forget(msg.rid)
            await self._send_raw(live.identity, live.client_id, msg.body)
        elif isinstance(msg, m.Abort):
            live = self._forget(msg.rid)
            if live is not None:
                await self._reply(live.identity, live.client_id, msg.error.as_error())
        else:
            raise TypeError(f"front door got unexpected {type(msg).__name__}")

    async def _reject(
        self, identity: bytes, client_id: str, code: v1.ErrorCode, text: str, *, param: str | None = None
    ) -> None:
        text = _short(text, 2 * MAX_ECHO_CHARS)
        log.warning("peer %s request %r: %s: %s", peer_label(identity), _short(client_id), code, text)
        await self._reply(identity, client_id, v1.Error(code=code, message=text, param=param))

    async def _reply(self, identity: bytes, client_id: str, body: v1.DaemonMessage) -> None:
        await self._send_raw(identity, client_id, v1.encode_body(body))

    async def _send_raw(self, identity: bytes, client_id: str, body: bytes) -> bool:
        """Send a frame; False (and the client treated as gone) when it cannot be."""
        frames = [identity, v1.encode_envelope(v1.Envelope(id=client_id)), body]
        try:
            await self._router.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EHOSTUNREACH, zmq.EAGAIN):
                raise
            await self._client_gone(identity, "disconnected" if exc.errno == errno.EHOSTUNREACH else "not reading")
            return False
        return True

    async def _probe(self, identity: bytes) -> bool:
        """A `pong` with id "", which clients ignore: can this peer still be reached?"""
        return await self._send_raw(identity, "", v1.encode_body(v1.Pong()))

    async def _client_gone(self, identity: bytes, why: str) -> None:
        """A client we cannot reach any more: cancel all it asked for, free its KV."""
        ended = await self._end_requests(identity)
        if ended:
            log.info("peer %s %s; cancelling %d request(s)", peer_label(identity), why, len(ended))

    async def _end_requests(self, identity: bytes) -> list[Live]:
        """Forget every live request of a client we serve no more and cancel its work."""
        ended = []
        for rid in self._admission.of_peer(identity):
            live = self._forget(rid)
            if live is not None:
                ended.append(live)
                if live.kind == "generate":
                    await self.send("tokenizer", m.CancelRequest(rid=rid))
        # Its cached conversations can never be asked for again (routing ids are not
        # reused): free them now rather than when the cache's byte cap pushes them out.
        await self.send("tokenizer", m.ForgetClient(connection=identity.hex()))
        return ended
