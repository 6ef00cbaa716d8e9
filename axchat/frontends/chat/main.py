"""`axchat chat`: flags, and the choice between the full-screen app and the line chat.

Imports neither Textual nor the model stack until it knows which one runs, so
`axchat chat --plain` starts as fast as `axchat ask`.
"""

from __future__ import annotations

import argparse
import sys

from axchat import curve_keys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="axchat chat", description="Chat with the axchat daemon (full screen, or --plain lines)."
    )
    p.add_argument("--socket", help="daemon socket path or endpoint (default: $AXCHAT_SOCKET or the per-user default)")
    curve_keys.add_key_flags(p)
    p.add_argument("--system", "--system-prompt", help="system prompt (--system-prompt: the seed's spelling)")
    p.add_argument("--temperature", type=float, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest answer, in tokens (default 512)")
    p.add_argument("--resume", action="store_true", help="reopen the last conversation")
    p.add_argument("--plain", action="store_true", help="line-by-line chat (automatic when stdout is not a terminal)")
    p.add_argument(
        "--stats",
        "--show-stats",
        action="store_true",
        help="--plain: print the seed's timing lines to stderr after each answer (/stats toggles them; "
        "the full-screen chat shows them in its footer)",
    )
    p.add_argument(
        "--no-autostart",
        action="store_true",
        help="when no daemon answers, fail instead of starting one (also: AXCHAT_NO_AUTOSTART=1)",
    )
    p.add_argument("--ignore-eos", action="store_true", help=argparse.SUPPRESS)  # tests need answers that run on
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    curve_keys.use_key_flags(args)
    if args.plain or not sys.stdout.isatty():
        from axchat.frontends.chat import plain

        return plain.run(args)
    from axchat import autostart
    from axchat.frontends.chat.app import ChatApp
    from axchat.frontends.chat.conversation import ConversationStore, open_conversation

    store = ConversationStore()
    ChatApp(
        socket=args.socket,
        conversation=open_conversation(store, resume=args.resume, system=args.system, temperature=args.temperature),
        store=store,
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
        start_daemon=autostart.enabled(args.no_autostart),
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
