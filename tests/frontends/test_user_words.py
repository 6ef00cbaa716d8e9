"""Errors in the words the user typed: `ask`'s flag names for the daemon's field names,
sizes in MB with the setting that changes them, the seed's flag spellings, empty
prompts refused, and the stats line as README shows it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import DaemonProcess, RawClient, chat

from axchat.frontends.ask import in_flag_words
from axchat.protocol import v1
from axchat.stats_line import format_host, format_stats


def run_ask(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axchat", "ask", "--no-autostart", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ask_names_flags_not_protocol_fields(daemon: DaemonProcess) -> None:
    proc = run_ask("--socket", daemon.socket, "--max-tokens", "0", "Hi")
    assert proc.returncode == 1 and "--max-tokens must be an integer" in proc.stderr, proc.stderr
    assert "sampling." not in proc.stderr
    proc = run_ask("--socket", daemon.socket, "--temperature", "-1", "Hi")
    assert "--temperature must be" in proc.stderr and "sampling." not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (v1.Error(code="invalid_field", message="sampling.max_tokens must be >= 1", param="sampling.max_tokens"),
         "--max-tokens must be >= 1"),
        (v1.Error(code="invalid_field", message="sampling.stop[1] is empty", param="sampling.stop[1]"),
         "--stop[1] is empty"),
        # Which field is at fault comes from `param`, not from the text: a sentence that
        # only mentions a sampling field, or an older daemon's with no `param`, is as sent.
        (v1.Error(code="invalid_field", message="sampling.top_k is fine; top_p is not", param="sampling.top_p"),
         "sampling.top_k is fine; top_p is not"),
        (v1.Error(code="invalid_field", message="sampling.top_p must be in (0, 1]"), "sampling.top_p must be in (0, 1]"),
        (v1.Error(code="context_overflow", message="the prompt is 9 tokens", param="messages"), "the prompt is 9 tokens"),
    ],
)  # fmt: skip
def test_ask_names_the_flag_that_param_names(error: v1.Error, shown: str) -> None:
    assert in_flag_words(error) == shown


def test_the_seed_spellings_work(daemon: DaemonProcess) -> None:
    seed = run_ask(
        "--socket", daemon.socket, "--max-tokens", "4", "--system-prompt", "Answer in French", "--show-stats", "--prompt", "Hello"
    )
    ours = run_ask("--socket", daemon.socket, "--max-tokens", "4", "--system", "Answer in French", "Hello")
    assert seed.returncode == 0 and ours.returncode == 0, seed.stderr
    assert seed.stdout == ours.stdout and "Tokenization: " in seed.stderr
    both = run_ask("--socket", daemon.socket, "--prompt", "Hi", "Hello")
    assert both.returncode == 2 and "not both" in both.stderr


@pytest.mark.parametrize(("args", "stdin"), [(("",), None), (("   ",), None), ((), ""), (("-",), "\n\n")])
def test_empty_prompts_are_refused_in_one_line(args: tuple[str, ...], stdin: str | None) -> None:
    # No daemon is needed (nor started): the refusal comes first.
    proc = run_ask("--socket", "/nonexistent/axchat.sock", *args, stdin=stdin)
    assert proc.returncode == 2 and proc.stderr == "axchat ask: the question is empty: nothing to ask\n", proc.stderr


def test_an_oversized_request_names_its_size_and_the_setting(raw: RawClient) -> None:
    welcome = raw.request(v1.Hello())
    assert isinstance(welcome, v1.Welcome)
    raw.send("big", chat("x" * (welcome.max_frame_bytes + 10)))
    _, body = raw.recv()
    assert isinstance(body, v1.Error) and body.code == "frame_too_large"
    assert " MB" in body.message and "--max-frame-bytes" in body.message and "max_frame_bytes" in body.message


@pytest.mark.parametrize(
    "module",
    ["axchat.frontends.ask", "axchat.frontends.chat.main", "axchat.frontends.status", "axchat.frontends.stop",
     "axchat.frontends.web.serve", "axchat.daemon.units", "axchat.daemon.config"],
)
def test_every_option_has_help(module: str) -> None:
    for action in importlib.import_module(module).build_parser()._actions:
        assert action.help, (module, action.option_strings or action.dest)


def test_stats_line_reads_as_readme_shows_it() -> None:
    stats = v1.Stats(tokenize_ms=0.6363, prefill_ms=3.7, ttft_ms=8.0, generate_ms=99.0, tokens_per_s=202.22, completion_tokens=20)
    assert format_stats(stats).startswith("Tokenization: 0.6ms | Prefill: 3.7ms | TTFT: 0.008s | Gen: 0.099s")


def test_host_line_counts_drafts_only_where_any_were_proposed() -> None:
    assert "Drafts" not in format_host(v1.Stats(cpu_percent=97.5))
    assert format_host(v1.Stats(cpu_percent=97.5, draft_proposed=20, draft_accepted=12)).endswith("| Drafts: 12/20")
