"""`axchat web`: parse the command line, refuse an unsafe bind, run the bridge until
SIGTERM or SIGINT, and log the URL it listens on (with `--port 0`, the port chosen)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from axchat import curve_keys, event_loop
from axchat.endpoint import is_loopback_host
from axchat.frontends.web.api_key import ENV_API_KEY, MIN_KEY_CHARS, UnusableKey, find_keys
from axchat.frontends.web.inflight import DEFAULT_MAX_REQUESTS
from axchat.logs import setup_logging

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

if TYPE_CHECKING:
    from aiohttp import web


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
    p.add_argument(
        "--api-key-file",
        help=f"read the API keys from this file: `NAME KEY` per line, one per application, or one bare KEY "
        f"(at least {MIN_KEY_CHARS} characters each)",
    )
    p.add_argument("--socket", help="daemon socket path or endpoint (default: $AXCHAT_SOCKET or the per-user default)")
    curve_keys.add_key_flags(p)
    p.add_argument(
        "--trust-user-header",
        metavar="HEADER",
        help="a header naming the end user, set by an authenticating proxy in front (e.g. X-Forwarded-User); "
        "honoured only from loopback or a --trusted-proxy address, and namespaced by the API key the proxy used",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an address (besides loopback) whose --trust-user-header is believed (repeatable)",
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


async def serve(host: str, port: int, app: web.Application, header_timeout_s: float, access: str) -> None:
    """Run `app` until SIGTERM or SIGINT; `access` says who may use it, for the log."""
    from aiohttp import web

    runner = web.AppRunner(
        app,
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
            log.info("listening: http://%s:%d/ (%s)", shown, bound_port, access)
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
        api_keys, warning = find_keys(args.api_key, args.api_key_file)
    except UnusableKey as exc:
        print(f"axchat web: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if warning:
        log.warning("%s", warning)
    if not api_keys and not is_loopback_host(args.host):
        print(
            f"axchat web: refusing to listen on {args.host!r} without an API key: anyone who can reach it could "
            f"use the daemon. Give --api-key-file FILE (or ${ENV_API_KEY}), or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    from axchat.frontends.web.app import build_app
    from axchat.frontends.web.end_user import UserTrust

    app = build_app(
        args.socket,
        api_keys,
        user_trust=UserTrust(args.trust_user_header, frozenset(args.trusted_proxy)),
        allowed_hosts=tuple(args.allowed_host),
        body_timeout_s=args.body_timeout,
        max_requests=args.max_requests,
    )
    if api_keys:
        access = f"API key required: {', '.join(sorted(api_keys))}"
    else:
        access = f"no API key: Unix user {os.getuid()} only"
    try:
        event_loop.run(serve(args.host, args.port, app, args.header_timeout, f"daemon {args.socket or 'default socket'}, {access}"))
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"axchat web: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
