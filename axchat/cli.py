"""The `axchat` command: dispatches to a subcommand module, importing only that one,
so `axchat ask` never pays for the daemon's imports."""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "serve": ("axchat.daemon.serve_command", "run the daemon: load a model once, serve many clients"),
    "ask": ("axchat.frontends.ask", "ask one question and stream the answer"),
    "chat": ("axchat.frontends.chat", "chat in the terminal (full screen, or --plain lines)"),
    "status": ("axchat.frontends.status", "show what the daemon is doing"),
    "web": ("axchat.frontends.web.serve", "serve an OpenAI-compatible API and a chat page over HTTP"),
    "pull": ("axchat.models.pull", "download a model (catalog name or hub id) into the local store"),
    "models": ("axchat.models.listing", "list local models and the catalogs"),
    "keys": ("axchat.keys_command", "create and list CURVE keys for tcp:// daemons, allow clients"),
    "stop": ("axchat.frontends.stop", "ask the local daemon to drain and exit"),
    "doctor": ("axchat.doctor.command", "test the engine on this machine and print what a problem report needs"),
    "service": ("axchat.daemon.units", "print or install the systemd unit (--user for a per-user one)"),
    "extract-embeddings": ("axchat.actors.backends.aipu.embeddings", "write a model's input embeddings for --device aipu"),
}


def usage() -> str:
    lines = ["usage: axchat COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`axchat COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from axchat import __version__

        print(f"axchat {__version__}")
        return 0
    entry = COMMANDS.get(argv[0])
    if entry is None:
        print(f"axchat: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    try:
        return int(module.main(argv[1:]) or 0)
    except BrokenPipeError:
        # `axchat models | head`: the reader left; that is not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
