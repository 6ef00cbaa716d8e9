"""`axchat ask`: one question, the answer streamed to stdout from a warm daemon.

Loads only the protocol and pyzmq (no torch, transformers or numpy): its start-up
time is what makes the daemon worth having.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import TextIO

import msgspec

from axchat import autostart, connection, curve_keys
from axchat.client import DaemonUnavailable, RequestFailed
from axchat.connection import retry_once
from axchat.frontends.field_names import with_field_named
from axchat.frontends.loading import loading_line
from axchat.protocol import v1
from axchat.stats_line import format_host, format_stats

EXIT_NO_DAEMON = 2
EXIT_USAGE = 2  # as argparse exits on a usage error
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
CANCEL_WAIT_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axchat ask", description="Ask the axchat daemon one question; the answer streams to stdout.")
    p.add_argument("prompt", nargs="?", help="the question; `-` or a piped stdin reads it from stdin")
    # The seed script's spelling; the positional argument is the short one.
    p.add_argument("--prompt", dest="prompt_flag", metavar="TEXT", help="the question, as the seed script took it")
    p.add_argument("--socket", help="daemon socket path or endpoint (default: $AXCHAT_SOCKET or the per-user default)")
    curve_keys.add_key_flags(p)
    p.add_argument("--system", "--system-prompt", help="system prompt (--system-prompt: the seed's spelling)")
    p.add_argument("--temperature", type=float, help="sampling temperature; 0 = greedy (default)")
    p.add_argument(
        "--top-p", type=float, help="keep the likeliest tokens up to this total probability (default 1: off)"
    )
    p.add_argument("--top-k", type=int, help="keep only the K likeliest tokens (default 0: off)")
    p.add_argument(
        "--min-p", type=float, help="drop tokens less likely than this fraction of the best (default 0: off)"
    )
    p.add_argument(
        "--repetition-penalty", type=float, help="penalise tokens already seen; 1 = off (default)"
    )
    p.add_argument("--max-tokens", type=int, help="longest answer, in tokens (default 256)")
    p.add_argument("--seed", type=int, help="random seed, so a sampled answer can be repeated")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--raw", action="store_true", help="send the prompt as raw text, without the chat template")
    p.add_argument("--json-schema", metavar="FILE", help="the answer must be JSON valid for the JSON schema in FILE")
    p.add_argument("--ignore-eos", action="store_true", help=argparse.SUPPRESS)  # benchmarks need exact lengths
    p.add_argument(
        "--stats", "--show-stats", action="store_true", help="print the seed's timing line to stderr (--show-stats: the seed's spelling)"
    )
    p.add_argument("--json", action="store_true", help="print NDJSON events instead of text")
    p.add_argument(
        "--no-autostart",
        action="store_true",
        help="when no daemon answers, fail instead of starting one (also: AXCHAT_NO_AUTOSTART=1)",
    )
    return p


class UsageError(Exception):
    """The command line asks nothing the daemon could answer; the message says what to give."""


def read_prompt(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.prompt is not None and args.prompt_flag is not None:
        raise UsageError("give the question once: as an argument or with --prompt, not both")
    given = args.prompt if args.prompt is not None else args.prompt_flag
    if given == "-" or (given is None and not stdin.isatty()):
        text = stdin.read()
    elif given is None:
        raise UsageError('give a question, e.g. axchat ask "Give me a joke", or pipe one on stdin')
    else:
        text = str(given)
    if not text.strip():
        raise UsageError("the question is empty: nothing to ask")
    return text


def read_schema(args: argparse.Namespace) -> v1.Constraint | None:
    """The constraint --json-schema asks for; the daemon judges the schema itself."""
    if args.json_schema is None:
        return None
    try:
        return v1.Constraint(kind="json_schema", schema=Path(args.json_schema).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--json-schema: cannot read {args.json_schema}: {exc}") from None


def in_flag_words(error: v1.Error) -> str:
    """The daemon's sentence with the field at fault (`error.param`, a protocol path such
    as `sampling.max_tokens`) called by the flag that set it: the user typed flags."""
    if error.param is None:
        return error.message
    flag = _flag_for(error.param)
    return error.message if flag is None else with_field_named(error.message, error.param, flag)


def _flag_for(param: str) -> str | None:
    """The flag that sets the sampling field `param` names (`sampling.stop[1]` ->
    `--stop[1]`), or None for a field no flag sets alone (the prompt, the messages)."""
    if param == "constraint.schema":
        return "--json-schema"
    if not param.startswith("sampling."):
        return None
    field, bracket, rest = param.removeprefix("sampling.").partition("[")
    for action in build_parser()._actions:
        if action.dest == field and action.option_strings:
            return action.option_strings[0] + bracket + rest
    return None


_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_tokens", "seed", "stop")


def build_request(args: argparse.Namespace, prompt: str) -> v1.Generate:
    # Options left out are None here, so that the daemon knows which ones were given
    # (`given`: a model's own defaults fill only the others).
    own = {name: getattr(args, name) for name in _SAMPLING if getattr(args, name) is not None}
    sampling = v1.Sampling(**own, ignore_eos=args.ignore_eos, given=sorted(own))
    constraint = read_schema(args)
    if args.raw:
        return v1.Generate(prompt=prompt, sampling=sampling, constraint=constraint)
    messages = []
    if args.system:
        messages.append(v1.ChatMessage(role="system", content=args.system))
    messages.append(v1.ChatMessage(role="user", content=prompt))
    return v1.Generate(messages=messages, sampling=sampling, constraint=constraint)


def _json_line(out: TextIO, event: dict[str, object]) -> None:
    out.write(json.dumps(event, ensure_ascii=False) + "\n")
    out.flush()


class _LoadingLine:
    """The `loading` progress on a terminal's stderr: one line, rewritten in place, and
    cleared before the answer starts. Nothing when stderr is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False

    def show(self, body: v1.Loading) -> None:
        if self.stream.isatty():
            self.stream.write(f"\r\033[Kaxchat: {loading_line(body)}")
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _emit(body: v1.DaemonMessage, args: argparse.Namespace, out: TextIO, loading: _LoadingLine) -> None:
    if isinstance(body, v1.Loading):
        if args.json:
            _json_line(out, msgspec.to_builtins(body))
        else:
            loading.show(body)
        return
    loading.clear()
    if isinstance(body, v1.Delta):
        if args.json:
            _json_line(out, {"type": "delta", "text": body.text, "token_ids": body.token_ids})
        else:
            out.write(body.text)
            out.flush()
    elif isinstance(body, v1.Done):
        if args.json:
            _json_line(out, {"type": "done", **msgspec.to_builtins(body)})
        else:
            out.write("\n")
            out.flush()
        if args.stats:
            print(format_stats(body.stats), file=sys.stderr)
            print(format_host(body.stats), file=sys.stderr)
    elif isinstance(body, v1.Queued):
        if args.json:
            _json_line(out, {"type": "queued", "position": body.position})
        elif sys.stderr.isatty():
            print(f"axchat: waiting for the device, position {body.position} in line", file=sys.stderr)
    elif isinstance(body, v1.Error) and args.json:
        _json_line(out, msgspec.to_builtins(body))


class _Shown:
    """Whether any of the answer showed: once it has, a restart is not asked again."""

    streamed = False


def _ask_once(args: argparse.Namespace, prompt: str, out: TextIO, shown: _Shown, *, wait_s: float = 0.0) -> int:
    start = autostart.enabled(args.no_autostart)
    with connection.connect(args.socket, start_daemon=start, wait_s=wait_s) as client:
        stream = client.generate(build_request(args, prompt))
        interrupted = False
        events = iter(stream)
        loading = _LoadingLine(sys.stderr)
        while True:
            try:
                body = next(events)
            except StopIteration:
                break
            except KeyboardInterrupt:
                if interrupted:
                    return EXIT_INTERRUPTED  # second Ctrl-C: leave without waiting
                interrupted = True
                # Ask the daemon to stop, then read on until it confirms, so the
                # request is really gone from the card before we exit.
                stream.cancel()
                stream.stall_timeout_s = CANCEL_WAIT_S
                continue
            shown.streamed = shown.streamed or isinstance(body, v1.Delta)
            _emit(body, args, out, loading)
            if isinstance(body, v1.Error):
                print(f"axchat ask: {in_flag_words(body)}", file=sys.stderr)
                return EXIT_FAILED
            if isinstance(body, v1.Done) and body.finish_reason == "error" and body.error is not None:
                print(f"axchat ask: {body.error.message}", file=sys.stderr)  # `done.error` names no field
                return EXIT_FAILED
        return EXIT_INTERRUPTED if interrupted else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    curve_keys.use_key_flags(args)
    try:
        prompt = read_prompt(args, sys.stdin)
        read_schema(args)  # a missing file is a usage error, before any daemon is asked
    except UsageError as exc:
        print(f"axchat ask: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    shown = _Shown()
    try:
        return retry_once(
            lambda wait_s: _ask_once(args, prompt, out, shown, wait_s=wait_s),
            shown=lambda: shown.streamed,
            announce=lambda exc: print(f"axchat ask: {exc}; retrying once", file=sys.stderr),
        )
    except DaemonUnavailable as exc:
        print(f"axchat ask: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except RequestFailed as exc:
        print(f"axchat ask: {exc.error.code}: {in_flag_words(exc.error)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # before the request started: nothing to cancel
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `axchat ask ... | head` closed our stdout: stop quietly, as other CLIs do.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        return 0


if __name__ == "__main__":
    sys.exit(main())
