"""`axchat web`: parse the command line, refuse an unsafe bind, run the bridge until
SIGTERM or SIGINT, and log the URL it listens on (with `--port 0`, the port chosen)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import sys

from axchat import curve_keys
from axchat.daemon.logs import setup_logging
from axchat.frontends.web.api_key import ENV_API_KEY, MIN_KEY_CHARS, UnusableKey, find_key
from axchat.frontends.web.bind_policy import is_loopback
from axchat.frontends.web.inflight import DEFAULT_MAX_REQUESTS

# A body still arriving after this long is a client holding a connection open, not a
# slow network: an 8 MiB body needs only 2 Mbit/s to make it.
BODY_TIMEOUT_S = 30.0
# A connection must complete its request's headers this long after it opens (or after
# its previous response): 300 clients trickling headers held connections for 30-49 s.
HEADER_TIMEOUT_S = 30.0

EXIT_REFUSED = 2
# Streams still open at shutdown get this long before their connections are closed
# (which cancels their requests on the daemon).
SHUTDOWN_GRACE_S = 5.0

log = logging.getLogger("axchat.web")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="axchat web", description="Serve an OpenAI-compatible API and a chat page in front of the axchat daemon."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default: 8000)")
    p.add_argument(
        "--api-key",
        help=f"require `Authorization: Bearer KEY`; visible in `ps`, so prefer --api-key-file or ${ENV_API_KEY}",
    )
    p.add_argument("--api-key-file", help=f"read the API key from this file (at least {MIN_KEY_CHARS} characters)")
    p.add_argument("--socket", help="daemon socket path or endpoint (default: $AXCHAT_SOCKET or the per-user default)")
    curve_keys.add_key_flags(p)
    p.add_argument(
        "--user-header",
        help="header naming the end user, set by an authenticating proxy in front (e.g. X-Forwarded-User); "
        "the daemon's per-user limits and prefix-cache privacy follow it",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="a Host name the keyless bridge also answers to, besides loopback ones (repeatable)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT_S,
        help=f"seconds a connection may take to send a request's headers (default {HEADER_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--body-timeout", type=float, default=BODY_TIMEOUT_S, help=f"seconds a request body may take (default {BODY_TIMEOUT_S:g})"
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        help=f"HTTP requests handled at once, streams included; past it 503 with Retry-After (default {DEFAULT_MAX_REQUESTS})",
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    return p


async def serve(
    host: str,
    port: int,
    socket: str | None,
    api_key: str | None,
    user_header: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    body_timeout_s: float = BODY_TIMEOUT_S,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> None:
    # Imported here so that a missing `web` extra is a one-line message, not a traceback.
    from aiohttp import web

    from axchat.frontends.web.app import build_app

    runner = web.AppRunner(
        build_app(
            socket,
            api_key,
            user_header=user_header,
            allowed_hosts=allowed_hosts,
            body_timeout_s=body_timeout_s,
            max_requests=max_requests,
        ),
        # A closed connection cancels its handler, so a non-streaming request whose
        # client left is cancelled on the daemon too, not only a stream at its next write.
        handler_cancellation=True,
        access_log=None,  # our middleware writes one line per request
        # aiohttp's keep-alive timer runs from a connection's start (and from each
        # response) and closes it if no whole request arrived by then: a header timeout.
        keepalive_timeout=header_timeout_s,
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        for address in runner.addresses:
            bound_host, bound_port = address[0], address[1]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            log.info(
                "listening: http://%s:%d/ (daemon %s, %s)",
                shown,
                bound_port,
                socket or "default socket",
                "API key required" if api_key else "no API key",
            )
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    curve_keys.use_key_flags(args)
    setup_logging(args.log_level)
    if importlib.util.find_spec("aiohttp") is None:
        print(
            "axchat web: error: aiohttp is not installed; install the web extra: pip install 'axchat[web]'",
            file=sys.stderr,
        )
        return 1
    try:
        api_key, warning = find_key(args.api_key, args.api_key_file)
    except UnusableKey as exc:
        print(f"axchat web: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if warning:
        log.warning("%s", warning)
    if api_key is None and not is_loopback(args.host):
        print(
            f"axchat web: refusing to listen on {args.host!r} without an API key: anyone who can reach it could "
            f"use the daemon. Give --api-key-file FILE (or ${ENV_API_KEY}), or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    try:
        asyncio.run(
            serve(
                args.host,
                args.port,
                args.socket,
                api_key,
                args.user_header,
                tuple(args.allowed_host),
                args.body_timeout,
                args.header_timeout,
                args.max_requests,
            )
        )
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"axchat web: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
