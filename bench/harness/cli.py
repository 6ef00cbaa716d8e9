"""The command-line boilerplate every bench script shares: its parser with `--model`,
the flags of the daemon it starts, and the model directory checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.output import BenchError


def parser(script: str, doc: str | None, *, model_help: str = "local model directory") -> argparse.ArgumentParser:
    """`bench/<script>.py`'s parser, described by its docstring's first line."""
    p = argparse.ArgumentParser(prog=f"bench/{script}.py", description=(doc or "").splitlines()[0])
    p.add_argument("--model", required=True, help=model_help)
    return p


SERVE_ARG_HELP = "extra `axchat serve` argument (repeatable)"


def add_daemon_args(
    p: argparse.ArgumentParser,
    *,
    serve_arg_help: str | None = SERVE_ARG_HELP,
    timeout_help: str | None = None,
    timeout_s: float = 600.0,
) -> None:
    """`--serve-arg` (extra `axchat serve` arguments; not with `serve_arg_help=None`),
    `--ready-timeout` and, given its help, `--timeout` (default `timeout_s`)."""
    if serve_arg_help is not None:
        p.add_argument("--serve-arg", action="append", default=[], help=serve_arg_help)
    if timeout_help is not None:
        p.add_argument("--timeout", type=float, default=timeout_s, help=timeout_help)
    p.add_argument(
        "--ready-timeout", type=float, default=600.0, help="seconds the daemon may take to get ready (default 600)"
    )


def model_dir(given: str) -> Path:
    """`--model` as an absolute directory; a BenchError when there is none."""
    path = Path(given).expanduser().resolve()
    if not path.is_dir():
        raise BenchError(f"--model {given}: no such directory")
    return path


def add_round_args(p: argparse.ArgumentParser, *, clients: str, rounds: int, rounds_help: str) -> None:
    """`--clients` (comma-separated counts), `--tokens`, `--rounds`, `--prompt-words`."""
    p.add_argument("--clients", default=clients, help=f"comma-separated client counts (default {clients})")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per request (default 64)")
    p.add_argument("--rounds", type=int, default=rounds, help=f"{rounds_help} (default {rounds})")
    p.add_argument("--prompt-words", type=int, default=30, help="words in each client's question (default 30)")


def check_round_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`args.client_counts` from `--clients`; a usage error for counts, tokens or rounds out of range."""
    try:
        args.client_counts = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        p.error("--clients takes comma-separated integers")
    if not args.client_counts or min(args.client_counts) < 1:
        p.error("--clients: every count must be at least 1")
    if args.tokens < 2 or args.rounds < 1:
        p.error("--tokens must be at least 2 and --rounds at least 1")
