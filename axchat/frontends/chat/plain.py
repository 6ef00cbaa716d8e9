"""`axchat chat --plain`: `User:` / `Assistant:` lines on stdin and stdout, for ssh
sessions, pipes and screen readers. Blocking client; same conversation files as the
full-screen app, so `--resume` works in either.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from axchat import autostart, connection
from axchat.client import Client, DaemonRestarted, DaemonUnavailable, GenerateStream, RequestFailed
from axchat.connection import retry_once
from axchat.frontends.chat import commands
from axchat.frontends.chat.conversation import Conversation, ConversationStore, Turn, open_conversation
from axchat.frontends.loading import loading_line
from axchat.protocol import v1
from axchat.stats_line import format_host, format_stats

EXIT_NO_DAEMON = 2
EXIT_INTERRUPTED = 130
# Without the TUI's heartbeat, a daemon silent this long is taken for gone.
STALL_TIMEOUT_S = 120.0
CANCEL_WAIT_S = 5.0


class PlainChat:
    def __init__(self, args: argparse.Namespace, store: ConversationStore, out: TextIO, echo: bool) -> None:
        self.args = args
        self.store = store
        self.out = out
        self.echo = echo  # stdin is not a terminal: show what was read, so stdout is a transcript
        self.conversation: Conversation = open_conversation(
            store, resume=args.resume, system=args.system, temperature=args.temperature
        )
        self.client: Client | None = None
        self.welcome: v1.Welcome | None = None
        self.prefix_due = False  # "Assistant: " waits for the answer, after any `loading` lines
        self.show_stats = bool(getattr(args, "stats", False))

    def connect(self, wait_s: float = 0.0) -> Client:
        """The client of the last turn, else a new one, trying `wait_s` for a daemon
        that is (re)starting."""
        if self.client is None:
            self.client = connection.connect(self.args.socket, wait_s=wait_s)
        return self.client

    def announce_retry(self, exc: DaemonRestarted) -> None:
        print(f"axchat chat: {exc}; retrying once", file=sys.stderr)
        self.drop_client()

    def start(self) -> None:
        """The first connection: to the daemon that answers, else to one started now
        (progress on stderr), as `axchat ask` does."""
        start = autostart.enabled(self.args.no_autostart)
        self.client = connection.connect(self.args.socket, start_daemon=start)
        self.welcome = self.client.hello()  # one more round trip, for the model's name

    def drop_client(self) -> None:
        # A fresh socket next turn: frames queued for a dead daemon must not reach a new one.
        if self.client is not None:
            self.client.close()
            self.client = None

    def loop(self, stdin: TextIO) -> int:
        # Ctrl-C outside an answer leaves; `answer` catches its own to stop the answer.
        try:
            while self.turn(stdin):
                pass
        except KeyboardInterrupt:
            self.out.write("\n")
        return 0

    def turn(self, stdin: TextIO) -> bool:
        """Read one line and act on it; False when the user leaves."""
        self.out.write("User: ")
        self.out.flush()
        line = stdin.readline()
        if not line:  # EOF
            self.out.write("\n")
            return False
        line = line.rstrip("\n")
        if self.echo:
            self.out.write(line + "\n")
        if not line.strip():
            return True
        try:
            command = commands.parse(line)
        except commands.CommandError as exc:  # never sent to the model
            self.note(str(exc))
            return True
        if command is None:
            self.answer(commands.unescape_prompt(line))
            return True
        return self.run_command(command)

    def note(self, text: str) -> None:
        """What a command did, in the transcript, so a piped chat shows it too."""
        self.out.write(f"({text})\n")
        self.out.flush()

    def run_command(self, command: commands.Command) -> bool:
        """Carry out a slash command; False when it says to leave."""
        if isinstance(command, commands.Quit):
            return False
        if isinstance(command, commands.Help):
            self.out.write(commands.HELP_PLAIN + "\n")
        elif isinstance(command, commands.ToggleStats):
            self.show_stats = not self.show_stats
            self.note("stats shown after each answer" if self.show_stats else "stats hidden")
        else:
            try:
                self.conversation, said = commands.apply(command, self.conversation)
            except commands.CommandError as exc:
                self.note(str(exc))
                return True
            self.store.save(self.conversation)
            self.note(said)
        return True

    def answer(self, prompt: str) -> None:
        user_turn = Turn("user", prompt)
        self.conversation.turns.append(user_turn)
        self.store.save(self.conversation)
        received: list[str] = []
        try:
            finish_reason, text = retry_once(
                lambda wait_s: self.stream(self.connect(wait_s), received),
                shown=lambda: bool(received),
                announce=self.announce_retry,
            )
        except (DaemonUnavailable, RequestFailed) as exc:
            if isinstance(exc, DaemonUnavailable):
                self.drop_client()
            self.conversation.turns.remove(user_turn)
            self.store.save(self.conversation)
            print(f"axchat chat: not answered: {exc}", file=sys.stderr)
            return
        self.conversation.turns.append(Turn("assistant", text, finish_reason))
        self.store.save(self.conversation)

    def stream(self, client: Client, received: list[str]) -> tuple[str, str]:
        request = v1.Generate(
            messages=self.conversation.messages(),
            sampling=v1.Sampling(
                temperature=self.conversation.temperature,
                max_tokens=self.args.max_tokens,
                ignore_eos=self.args.ignore_eos,
            ),
        )
        stream = client.generate(request, stall_timeout_s=STALL_TIMEOUT_S)
        self.prefix_due = True
        interrupted = False
        while True:
            # Ctrl-C can land anywhere in the loop that shows the answer (a signal is
            # taken at any backward jump), so the whole loop sits inside this try.
            try:
                return self.show(stream, received)
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop waiting for the daemon's word
                    self.out.write("\n")
                    self.drop_client()
                    return "cancelled", "".join(received)
                interrupted = True
                stream.cancel()
                stream.stall_timeout_s = CANCEL_WAIT_S

    def show(self, stream: GenerateStream, received: list[str]) -> tuple[str, str]:
        """Write the answer as it streams; its finish reason and whole text."""
        last_stage = None
        for body in stream:
            if isinstance(body, v1.Loading):
                # A line per stage, on a terminal only: a transcript on stdout stays clean.
                if sys.stderr.isatty() and body.stage != last_stage:
                    print(f"({loading_line(body)})", file=sys.stderr)
                last_stage = body.stage
                continue
            if self.prefix_due:
                self.out.write("Assistant: ")
                self.prefix_due = False
            if isinstance(body, v1.Delta):
                received.append(body.text)
                self.out.write(body.text)
                self.out.flush()
            elif isinstance(body, v1.Done):
                if body.finish_reason == "error":
                    self.out.write("\n")
                    detail = body.error.message if body.error else "unknown error"
                    raise RequestFailed(v1.Error(code=body.error.code if body.error else "internal", message=detail))
                self.out.write(" [stopped]\n" if body.finish_reason == "cancelled" else "\n")
                self.out.flush()
                if self.show_stats:
                    print(format_stats(body.stats), file=sys.stderr)
                    print(format_host(body.stats), file=sys.stderr)
                return body.finish_reason, "".join(received)
            elif isinstance(body, v1.Error):
                self.out.write("\n")
                raise RequestFailed(body)
        raise DaemonUnavailable("the stream ended without an answer")


def run(args: argparse.Namespace) -> int:
    chat = PlainChat(args, ConversationStore(), sys.stdout, echo=not sys.stdin.isatty())
    try:
        chat.start()
    except DaemonUnavailable as exc:
        print(f"axchat chat: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    welcome = chat.welcome
    if sys.stdin.isatty() and welcome is not None:
        print(
            f"axchat chat: {welcome.model} on {welcome.device}. Ctrl-C stops an answer; "
            "/help lists the commands; /quit or Ctrl-D leaves.",
            file=sys.stderr,
        )
    if chat.conversation.turns:
        print(f"axchat chat: resumed a conversation of {len(chat.conversation.turns)} turns", file=sys.stderr)
    try:
        return chat.loop(sys.stdin)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:  # while connecting, before any answer started
        return EXIT_INTERRUPTED
    finally:
        chat.drop_client()
