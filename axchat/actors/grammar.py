"""A request's `constraint` turned into one llguidance grammar, checked field by field.

Every refusal names the field at fault (`constraint.schema`, `constraint.tools[2].parameters`)
so that a front end can map it to its own field names. The limits bound what one
request's grammar may cost: compile work and lexer states (memory) here, and the work
of each token's mask, which runs beside other clients' streams."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, NamedTuple

from axchat.actors.tool_syntax import ToolSyntax
from axchat.protocol.v1 import MAX_TOOLS, Constraint

# llguidance is imported where it is called: a daemon maps its library only once a
# request asks for a constraint.
if TYPE_CHECKING:
    import llguidance as llg

# About 20 ms of regex analysis, 20k lexer states (~40 MB at most), a 100k-symbol
# grammar; each token's mask at most ~4 ms of lexer work and ~1 ms of parser items.
LIMITS = dict(
    initial_lexer_fuel=1_000_000,
    step_lexer_fuel=50_000,
    step_max_items=20_000,
    max_lexer_states=20_000,
    max_grammar_size=100_000,
    verbose_errors=False,
)
# Compact JSON: no runs of whitespace, which a weak model could repeat until its length ends.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Calls one reply may make when parallel calls are allowed: a weak model may not stop.
MAX_PARALLEL_CALLS = 8
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def limits() -> llg.LLParserLimits:
    import llguidance as llg

    return llg.LLParserLimits(**LIMITS)  # type: ignore[arg-type]


class BadConstraint(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class Compiled(NamedTuple):
    grammar: str  # llguidance's grammar text: what the device builds its matcher from
    tools: bool  # the reply may hold calls, to be parsed out


def build(constraint: Constraint, syntax: ToolSyntax, tokenizer: llg.LLTokenizer) -> Compiled:
    """The grammar for `constraint`; raises BadConstraint naming the field at fault."""
    import llguidance as llg

    kind = constraint.kind
    if kind == "json_schema":
        grammar = _check(_from_schema(constraint.schema, "constraint.schema"), tokenizer, "constraint.schema")
        return Compiled(grammar, tools=False)
    if kind == "json_object":
        return Compiled(_check(_schema_grammar({"type": "object"}), tokenizer, "constraint"), tools=False)
    if kind == "regex":
        return Compiled(_check(llg.LLMatcher.grammar_from_regex(constraint.grammar), tokenizer, "constraint.grammar"), False)
    if kind == "lark":
        return Compiled(_check(llg.LLMatcher.grammar_from_lark(constraint.grammar), tokenizer, "constraint.grammar"), False)
    text = _tools_grammar(constraint, syntax, tokenizer)
    if not text:  # tool_choice "none": tools shown to the model, the reply free text
        return Compiled("", tools=False)
    return Compiled(_check(text, tokenizer, "constraint.tools"), tools=True)


def _from_schema(text: str, param: str) -> str:
    try:
        schema = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadConstraint(param, f"{param} is not valid JSON: {exc}") from None
    if not isinstance(schema, (dict, bool)):
        raise BadConstraint(param, f"{param} must be a JSON schema (an object), got {type(schema).__name__}")
    return _schema_grammar(schema, param)


def _schema_grammar(schema: Any, param: str = "constraint") -> str:
    import llguidance as llg

    try:
        return llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)  # type: ignore[arg-type]
    except (ValueError, RecursionError) as exc:
        raise BadConstraint(param, f"{param}: {exc}") from None


def _check(grammar: str, tokenizer: llg.LLTokenizer, param: str) -> str:
    import llguidance as llg

    error = llg.LLMatcher.validate_grammar(grammar, tokenizer, limits=limits())
    if error:
        raise BadConstraint(param, f"{param} cannot be used: {_first_line(error)}")
    return grammar


def _first_line(error: str) -> str:
    return error.strip().splitlines()[0][:500] if error.strip() else "invalid"


def _tools_grammar(constraint: Constraint, syntax: ToolSyntax, tokenizer: llg.LLTokenizer) -> str:
    import llguidance as llg

    tools = constraint.tools
    if not tools:
        raise BadConstraint("constraint.tools", "constraint.tools is empty: a tools constraint needs at least one")
    if len(tools) > MAX_TOOLS:
        raise BadConstraint("constraint.tools", f"{len(tools)} tools; at most {MAX_TOOLS} may be offered")
    names: set[str] = set()
    bodies: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        if not _TOOL_NAME.fullmatch(tool.name) or tool.name in names:
            why = "repeats another tool's name" if tool.name in names else "must be 1 to 64 of A-Z a-z 0-9 _ . -"
            raise BadConstraint(f"constraint.tools[{i}].name", f"constraint.tools[{i}].name {why}")
        names.add(tool.name)
        param = f"constraint.tools[{i}].parameters"
        _check(_from_schema(tool.parameters, param), tokenizer, param)  # each schema judged alone
        bodies[tool.name] = {
            "type": "object",
            "properties": {"name": {"const": tool.name}, syntax.args_key: json.loads(tool.parameters)},
            "required": ["name", syntax.args_key],
            "additionalProperties": False,
            "x-guidance": JSON_OPTIONS,  # inline schemas take their options from here
        }
    choice = constraint.tool_choice
    if choice not in ("auto", "required", "none") and choice not in names:
        why = f"constraint.tool_choice {choice!r} is not auto, required, none or a tool's name"
        raise BadConstraint("constraint.tool_choice", why)
    if choice == "none":
        return ""
    offered = [bodies[choice]] if choice in names else list(bodies.values())
    call = "call: " + " | ".join(f"%json {json.dumps(body)}" for body in offered)
    more = f"{{0,{MAX_PARALLEL_CALLS - 1}}}" if constraint.parallel_tool_calls and not syntax.leading_only else ""
    if syntax.leading_only:
        calls = "calls: call"
        free = "TEXT: /[^{ \\t\\n](.|\\n)*/"
        start = "start: calls" if choice != "auto" else "start: TEXT | calls"
        return llg.LLMatcher.grammar_from_lark("\n".join([start, calls, call, free]))
    opening, closing = json.dumps(syntax.opening), json.dumps(syntax.closing)
    tag = json.dumps(syntax.opening.rstrip("\n"))
    lines = [
        f"calls: {opening} call {closing}" + (f" (\"\\n\" {opening} call {closing}){more}" if more else ""),
        call,
    ]
    if choice == "auto":
        # Text up to the opening tag, then only calls (a lazy start, triggered by the tag);
        # or text that never holds the tag.
        after = json.dumps(syntax.opening[len(syntax.opening.rstrip("\n")) :])
        never = f"/(.|\\n)*/ & ~/(.|\\n)*{re.escape(syntax.opening.rstrip(chr(10)))}(.|\\n)*/"
        lines = [
            "start: TEXT | free first_call",
            f"TEXT: {never}",
            f"free[stop={tag}]: {never}",
            f"first_call: {after} call {closing}" + (f" (\"\\n\" {opening} call {closing}){more}" if more else ""),
            call,
        ]
    else:
        lines.insert(0, "start: calls")
    return llg.LLMatcher.grammar_from_lark("\n".join(lines))
