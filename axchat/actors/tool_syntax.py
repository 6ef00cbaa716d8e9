"""How a model family writes a tool call, and reading calls back out of a reply.

The syntax follows the model's chat template where it defines one: Hermes and Qwen
templates wrap each call in `<tool_call>` tags around `{"name", "arguments"}`; Llama 3.x
answers with a bare `{"name", "parameters"}` object. Any other template gets the
`<tool_call>` form, which the tools' description in the prompt then teaches."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolSyntax:
    name: str
    opening: str  # text that starts a call
    closing: str  # text that ends one
    args_key: str  # the JSON key holding the arguments
    leading_only: bool  # a call may only open the reply (a bare JSON object)


HERMES = ToolSyntax("hermes", "<tool_call>\n", "\n</tool_call>", "arguments", leading_only=False)
LLAMA3 = ToolSyntax("llama3", "{", "", "parameters", leading_only=True)


def syntax_for(chat_template: str | None) -> ToolSyntax:
    """The family's syntax, told by its template's text."""
    template = chat_template or ""
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or "ipython" in template:
        return LLAMA3
    return HERMES


def template_knows_tools(chat_template: str | None) -> bool:
    """Whether the template renders `tools=` itself; if not, the prompt describes them."""
    return "tools" in (chat_template or "")


def tools_preamble(tools: list[dict[str, object]], syntax: ToolSyntax) -> str:
    """A system text that lists the tools and the call syntax, for templates without tools."""
    example = json.dumps({"name": "NAME", syntax.args_key: {"ARG": "VALUE"}})
    lines = [
        "You may call these tools. To call one, answer with",
        f"{syntax.opening}{example}{syntax.closing}",
        "and nothing else. The tools, as JSON:",
    ]
    lines += [json.dumps(tool["function"]) for tool in tools]
    return "\n".join(lines)


class CallSplitter:
    """Splits a streamed reply into its text and its calls' text.

    Text that could be the start of a call's opening is held back until it is known
    not to be; from the opening on, everything is call text. The grammar guarantees
    that nothing but calls follow the first one."""

    def __init__(self, syntax: ToolSyntax) -> None:
        self.syntax = syntax
        self._held = ""
        self._seen = 0  # characters of reply text fed so far (before the calls)
        self.calls_text: str | None = None

    def feed(self, text: str) -> str:
        """The part of `text` that is reply text, safe to show now."""
        if self.calls_text is not None:
            self.calls_text += text
            return ""
        buf = self._held + text
        opening = self.syntax.opening
        if self.syntax.leading_only:
            if self._seen == 0 and buf.lstrip() == "":
                self._held = buf
                return ""
            if self._seen == 0 and buf.lstrip().startswith(opening):
                self.calls_text, self._held = buf, ""
                return ""
            self._seen += len(buf)
            self._held = ""
            return buf
        at = buf.find(opening)
        if at >= 0:
            self.calls_text, self._held = buf[at:], ""
            self._seen += at
            return buf[:at]
        keep = _partial_suffix(buf, opening)
        self._held = buf[len(buf) - keep :] if keep else ""
        out = buf[: len(buf) - keep]
        self._seen += len(out)
        return out

    def flush(self) -> str:
        """Held text at the end of the reply: it never became a call."""
        held, self._held = self._held, ""
        return held


def _partial_suffix(text: str, opening: str) -> int:
    """Length of the longest end of `text` that begins `opening`."""
    for n in range(min(len(text), len(opening) - 1), 0, -1):
        if opening.startswith(text[-n:]):
            return n
    return 0
