"""Structured-output fields of the bridge's APIs onto the daemon's `constraint`, and the
daemon's names for a bad constraint's field back onto an API's, so that every API on
the bridge (OpenAI's, Ollama's) asks for JSON and tools the same way."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from axchat.protocol import v1


def json_constraint(schema: Any = None) -> v1.Constraint:
    """Any JSON object (`schema` None or "json"), or JSON valid for `schema`: a parsed
    schema (a dict), or its JSON text (str or bytes) passed on as it is."""
    if schema is None or schema == "json":
        return v1.Constraint(kind="json_object")
    if isinstance(schema, (bytes, bytearray, memoryview)):
        return v1.Constraint(kind="json_schema", schema=bytes(schema).decode("utf-8", "replace"))
    if isinstance(schema, str):
        return v1.Constraint(kind="json_schema", schema=schema)
    return v1.Constraint(kind="json_schema", schema=json.dumps(schema))


class OfferedTool(NamedTuple):
    name: str
    description: str
    parameters: Any  # a parsed schema, or its JSON text


def tools_constraint(tools: Sequence[OfferedTool], choice: str = "auto", parallel: bool = True) -> v1.Constraint:
    """Calls to `tools`: `choice` "auto" (text or calls), "required", or one tool's name."""
    specs = [
        v1.ToolSpec(name=t.name, description=t.description, parameters=_schema_text(t.parameters)) for t in tools
    ]
    return v1.Constraint(kind="tools", tools=specs, tool_choice=choice, parallel_tool_calls=parallel)


def _schema_text(schema: Any) -> str:
    if schema is None:
        return "{}"
    if isinstance(schema, (bytes, bytearray, memoryview)):
        return bytes(schema).decode("utf-8", "replace")
    return schema if isinstance(schema, str) else json.dumps(schema)


_TOOL_FIELD = re.compile(r"^constraint\.tools\[(\d+)\]\.(\w+)$")


def api_param(param: str, names: Mapping[str, str], tool_field: str) -> str:
    """The API's name for the daemon's `param` (`constraint.schema` and the like):
    `names` maps the daemon's plain fields, `tool_field` is a format with `{i}` and
    `{field}` for a tool's (`tools[{i}].function.{field}`)."""
    found = _TOOL_FIELD.match(param)
    if found:
        return tool_field.format(i=found.group(1), field=found.group(2))
    return names.get(param, param)
