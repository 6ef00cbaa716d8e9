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

from axchat.daemon.logs import setup_logging
from axchat.frontends.web.bind_policy import is_loopback

ENV_API_KEY = "AXCHAT_API_KEY"
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
    p.add_argument("--api-key", help=f"require `Authorization: Bearer KEY` (default: ${ENV_API_KEY})")
    p.add_argument("--socket", help="daemon socket path or endpoint (default: $AXCHAT_SOCKET or the per-user default)")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    return p


async def serve(host: str, port: int, socket: str | None, api_key: str | None) -> None:
    # Imported here so that a missing `web` extra is a one-line message, not a traceback.
    from aiohttp import web

    from axchat.frontends.web.app import build_app

    runner = web.AppRunner(
        build_app(socket, api_key),
        # A closed connection cancels its handler, so a non-streaming request whose
        # client left is cancelled on the daemon too, not only a stream at its next write.
        handler_cancellation=True,
        access_log=None,  # our middleware writes one line per request
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
    setup_logging(args.log_level)
    if importlib.util.find_spec("aiohttp") is None:
        print(
            "axchat web: error: aiohttp is not installed; install the web extra: pip install 'axchat[web]'",
            file=sys.stderr,
        )
        return 1
    api_key = args.api_key or os.environ.get(ENV_API_KEY) or None
    if api_key is None and not is_loopback(args.host):
        print(
            f"axchat web: refusing to listen on {args.host!r} without an API key: anyone who can reach it could "
            f"use the daemon. Give --api-key KEY (or ${ENV_API_KEY}), or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    try:
        asyncio.run(serve(args.host, args.port, args.socket, api_key))
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"axchat web: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
