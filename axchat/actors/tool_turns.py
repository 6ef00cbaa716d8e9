"""Tool use as the chat template sees it: the tools offered, the calls an assistant
turn made and the `tool` messages answering them, in Hugging Face's message shape."""

from __future__ import annotations

import json
from typing import Any

from axchat.actors.tool_syntax import ToolSyntax
from axchat.protocol.v1 import ChatMessage, Constraint


def template_tools(constraint: Constraint | None) -> list[dict[str, Any]]:
    """The tools for the template's `tools=`, their schemas as objects (one that is no
    JSON is checked, and the request refused, beside the encode that renders this)."""
    tools = constraint.tools if constraint is not None else []
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": _arguments(t.parameters)},
        }
        for t in tools
    ]


def template_message(msg: ChatMessage, calls_as_text: ToolSyntax | None = None) -> dict[str, Any]:
    """`msg` for the template; with `calls_as_text` (a template that renders no calls)
    an assistant's calls are written into its text as the model would have written them."""
    out: dict[str, Any] = {"role": msg.role, "content": msg.content}
    if msg.tool_calls and calls_as_text is not None:
        syntax = calls_as_text
        written = [
            f"{syntax.opening}{json.dumps({'name': c.name, syntax.args_key: _arguments(c.arguments)})}{syntax.closing}"
            for c in msg.tool_calls
        ]
        out["content"] = msg.content + "\n".join(written)
    elif msg.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in msg.tool_calls
        ]
    if msg.tool_call_id:
        out["tool_call_id"] = msg.tool_call_id
    return out


def _arguments(text: str) -> Any:
    # Templates index arguments as a mapping (`tool_call.arguments|tojson`); a client's
    # text that is not JSON is passed on as it came.
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text
