"""Keeps docs/protocol.md honest: its tables, defaults, codes and byte dumps must match
axchat.protocol.v1 (and the few daemon constants it quotes).

The doc's conventions this test relies on:

* A field table has the header ``| Field | Type | Default | Meaning |`` and belongs to the
  struct named by the first `backticked` word of the heading above it: the message's
  ``type`` tag for a message, the class name (``Sampling``) for any other struct.
* Type cells use the names `wire_type` produces; default cells say ``required`` or give
  the default as a backticked JSON literal.
* Each ```` ```msgpack-hex KIND ```` block (KIND: envelope, client or daemon) is followed
  by a ```` ```json ```` block holding the map those bytes decode to.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from axchat.protocol import v1

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
FIELD_HEADER = ["Field", "Type", "Default", "Meaning"]
CLIENT_SECTION = "Client → daemon"
DAEMON_SECTION = "Daemon → client"


# ---------------------------------------------------------------- parsing the doc


@dataclass
class Table:
    section: str  # the enclosing `## ` heading
    heading: str  # the nearest heading of any level
    header: list[str]
    rows: list[list[str]]
    line: int


@dataclass
class Fence:
    info: str
    body: str
    line: int


def _cells(line: str) -> list[str]:
    assert "\\|" not in line, f"escaped pipes are not supported in tables: {line!r}"
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text: str) -> tuple[list[Table], list[Fence]]:
    tables: list[Table] = []
    fences: list[Fence] = []
    lines = text.splitlines()
    section = heading = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            start, info, body = i + 1, line[3:].strip(), []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"unclosed code fence at line {start}"
            fences.append(Fence(info, "\n".join(body), start))
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
            if line.startswith("## "):
                section = heading
        elif line.startswith("|"):
            start, block = i + 1, []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            header = _cells(block[0])
            separator = set("".join(_cells(block[1]))) if len(block) >= 2 else set()
            assert separator and separator <= set("-: "), f"table at line {start} lacks a separator row"
            rows = [_cells(r) for r in block[2:]]
            for n, row in enumerate(rows):
                assert len(row) == len(header), (
                    f"table at line {start}, row {n + 1}: {len(row)} cells, header has {len(header)}"
                )
            tables.append(Table(section, heading, header, rows, start))
            continue
        i += 1
    return tables, fences


def first_code(text: str) -> str | None:
    match = re.search(r"`([^`]+)`", text)
    return match.group(1) if match else None


def codes(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC.is_file(), f"{DOC} is missing"
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tables(doc: str) -> list[Table]:
    return parse(doc)[0]


@pytest.fixture(scope="module")
def fences(doc: str) -> list[Fence]:
    return parse(doc)[1]


@pytest.fixture(scope="module")
def field_tables(tables: list[Table]) -> dict[str, Table]:
    found: dict[str, Table] = {}
    for t in tables:
        if t.header != FIELD_HEADER:
            continue
        key = first_code(t.heading)
        assert key, f"field table at line {t.line} sits under a heading with no `name`: {t.heading!r}"
        assert key not in found, f"two field tables for {key!r} (lines {found[key].line} and {t.line})"
        found[key] = t
    return found


def table_with_header(tables: list[Table], first: str) -> Table:
    matches = [t for t in tables if t.header and t.header[0] == first]
    assert len(matches) == 1, f"expected one table whose first column is {first!r}, found {len(matches)}"
    return matches[0]


# ---------------------------------------------------------------- the code's side


def client_types() -> tuple[type, ...]:
    return typing.get_args(v1.ClientMessage)


def daemon_types() -> tuple[type, ...]:
    return typing.get_args(v1.DaemonMessage)


def tag_of(cls: type) -> str | None:
    return cls.__struct_config__.tag  # type: ignore[attr-defined]


def doc_key(cls: type) -> str:
    return tag_of(cls) or cls.__name__


def all_structs() -> list[type]:
    """Envelope, every message, and every struct reachable from their fields."""
    seen: list[type] = []

    def walk(t: mi.Type) -> None:
        if isinstance(t, mi.StructType):
            if t.cls in seen:
                return
            seen.append(t.cls)
            for f in t.fields:
                walk(f.type)
        elif isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
            walk(t.item_type)
        elif isinstance(t, mi.DictType):
            walk(t.key_type)
            walk(t.value_type)
        elif isinstance(t, mi.UnionType):
            for x in t.types:
                walk(x)

    for cls in (v1.Envelope, *client_types(), *daemon_types()):
        walk(mi.type_info(cls))
    return seen


def wire_type(t: mi.Type) -> str:
    """The name the doc's Type column uses for a field type."""
    if isinstance(t, mi.StrType):
        return "str"
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.IntType):
        return "int"
    if isinstance(t, mi.FloatType):
        return "float"
    if isinstance(t, mi.NoneType):
        return "nil"
    if isinstance(t, mi.LiteralType):
        kinds = {type(v) for v in t.values}
        assert kinds in ({str}, {int}), f"mixed literal {t}"
        return "str" if kinds == {str} else "int"
    if isinstance(t, mi.EnumType):  # a typed state whose wire value is its str value
        assert all(isinstance(member.value, str) for member in t.cls), f"non-str enum {t}"
        return "str"
    if isinstance(t, mi.ListType):
        return "array of " + wire_type(t.item_type)
    if isinstance(t, mi.StructType):
        return f"{t.cls.__name__} map"
    if isinstance(t, mi.UnionType):
        return " or ".join(wire_type(x) for x in t.types)
    raise AssertionError(f"wire_type does not know {t!r}: teach it, and the doc, a name for it")


def literal_values(t: mi.Type) -> list[Any]:
    if isinstance(t, mi.LiteralType):
        return list(t.values)
    if isinstance(t, mi.EnumType):
        return [member.value for member in t.cls]
    if isinstance(t, mi.ListType):
        return literal_values(t.item_type)
    if isinstance(t, mi.UnionType):
        return [v for x in t.types for v in literal_values(x)]
    return []


REQUIRED = object()


def default_of(field: msgspec.structs.FieldInfo) -> Any:
    if field.required:
        return REQUIRED
    value = field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
    return msgspec.to_builtins(value)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON kind all the way down (so 1 is not 1.0, nor True)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=False))
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------- field tables


def test_every_message_type_has_a_field_table(field_tables: dict[str, Table]) -> None:
    tags = [tag_of(c) for c in (*client_types(), *daemon_types())]
    assert all(tags), "every message struct must carry a type tag"
    missing = [t for t in tags if t not in field_tables]
    assert not missing, f"docs/protocol.md has no field table for message type(s) {missing}"


def test_every_struct_has_exactly_its_fields(field_tables: dict[str, Table]) -> None:
    problems: list[str] = []
    for cls in all_structs():
        key = doc_key(cls)
        table = field_tables.get(key)
        if table is None:
            problems.append(f"no field table for `{key}` ({cls.__name__})")
            continue
        expected = [f.encode_name for f in msgspec.structs.fields(cls)]
        if tag_of(cls):
            expected = ["type", *expected]
        documented = [first_code(row[0]) for row in table.rows]
        for row, name in zip(table.rows, documented, strict=False):
            if row[0] != f"`{name}`":
                problems.append(f"`{key}`: the Field cell {row[0]!r} should be just the backticked name")
        if sorted(documented, key=str) != sorted(expected):
            problems.append(
                f"`{key}` (line {table.line}): doc lists {documented}, {cls.__name__} has {expected}"
            )
        if len(set(documented)) != len(documented):
            problems.append(f"`{key}`: a field is listed twice")
    documented_keys = {doc_key(c) for c in all_structs()}
    stray = sorted(set(field_tables) - documented_keys)
    if stray:
        problems.append(f"field tables for names that are no protocol struct: {stray}")
    assert not problems, "\n".join(problems)


def test_field_types_and_defaults_match(field_tables: dict[str, Table]) -> None:
    problems: list[str] = []
    for cls in all_structs():
        table = field_tables.get(doc_key(cls))
        if table is None:
            continue  # reported by test_every_struct_has_exactly_its_fields
        rows = {first_code(row[0]): row for row in table.rows}
        info = {f.encode_name: f for f in mi.type_info(cls).fields}
        for field in msgspec.structs.fields(cls):
            row = rows.get(field.encode_name)
            if row is None:
                continue
            where = f"{doc_key(cls)}.{field.encode_name}"
            want_type = wire_type(info[field.encode_name].type)
            got_type = row[1].replace("`", "").strip()
            if got_type != want_type:
                problems.append(f"{where}: Type says {got_type!r}, the code says {want_type!r}")
            want = default_of(field)
            cell = row[2]
            if want is REQUIRED:
                if cell != "required":
                    problems.append(f"{where}: the field is required, Default says {cell!r}")
                continue
            literal = first_code(cell)
            if literal is None:
                problems.append(f"{where}: Default {cell!r} should be a backticked JSON literal, {json.dumps(want)}")
                continue
            try:
                got = json.loads(literal)
            except json.JSONDecodeError:
                problems.append(f"{where}: Default `{literal}` is not a JSON literal")
                continue
            if not same(got, want):
                problems.append(f"{where}: Default says {literal}, the code's default is {json.dumps(want)}")
        tag = tag_of(cls)
        if tag and "type" in rows:
            row = rows["type"]
            if row[1] != "str" or row[2] != "required" or f'`"{tag}"`' not in row[3]:
                problems.append(f'{tag}.type: expected "| `type` | str | required | always `"{tag}"` |", got {row}')
    assert not problems, "\n".join(problems)


def test_message_tables_sit_in_their_direction(field_tables: dict[str, Table]) -> None:
    problems = []
    for classes, section in ((client_types(), CLIENT_SECTION), (daemon_types(), DAEMON_SECTION)):
        for cls in classes:
            table = field_tables.get(doc_key(cls))
            if table is not None and section not in table.section:
                problems.append(f"`{doc_key(cls)}` is documented under {table.section!r}, not {section!r}")
    assert not problems, "\n".join(problems)


def test_tag_overview_lists_each_direction(tables: list[Table]) -> None:
    overview = table_with_header(tables, "Direction")
    rows = {row[0]: set(codes(row[1])) for row in overview.rows}
    assert rows.get("client → daemon") == {tag_of(c) for c in client_types()}
    assert rows.get("daemon → client") == {tag_of(c) for c in daemon_types()}


def test_every_literal_value_is_named(doc: str) -> None:
    missing = []
    for cls in all_structs():
        for f in mi.type_info(cls).fields:
            for value in literal_values(f.type):
                if f"`{value}`" not in doc and f'`"{value}"`' not in doc:
                    missing.append(f"{cls.__name__}.{f.encode_name}: {value!r}")
    assert not missing, f"literal values the doc never names: {missing}"


# ---------------------------------------------------------------- closed sets


def test_error_code_table_is_the_closed_set(tables: list[Table]) -> None:
    table = table_with_header(tables, "Code")
    documented = [first_code(row[0]) for row in table.rows]
    assert len(documented) == len(set(documented)), f"an error code is listed twice: {documented}"
    assert set(documented) == set(typing.get_args(v1.ErrorCode)), (
        f"error codes: doc has {sorted(map(str, documented))}, v1.ErrorCode has {sorted(typing.get_args(v1.ErrorCode))}"
    )
    assert all(row[-1] for row in table.rows), "every error code needs a When"


def test_finish_reason_table_is_the_closed_set(tables: list[Table]) -> None:
    table = table_with_header(tables, "Reason")
    documented = [first_code(row[0]) for row in table.rows]
    assert len(documented) == len(set(documented))
    assert set(documented) == set(typing.get_args(v1.FinishReason))


def test_terminal_replies_match_v1_terminal(doc: str) -> None:
    match = re.search(r"Terminal: (.*?)\. Not terminal: (.*?)\.", " ".join(doc.split()))
    assert match, "the lifecycle section must say 'Terminal: ... . Not terminal: ... .'"
    terminal, not_terminal = set(codes(match.group(1))), set(codes(match.group(2)))
    want = {tag_of(c) for c in v1.TERMINAL}
    assert terminal == want
    assert not_terminal == {tag_of(c) for c in daemon_types()} - want


def test_lifecycle_table_covers_every_request(tables: list[Table]) -> None:
    table = table_with_header(tables, "Request")
    assert {first_code(row[0]) for row in table.rows} == {tag_of(c) for c in client_types()}


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise AssertionError(f"cannot resolve {dotted}")


def test_limits_table_matches_the_code(tables: list[Table]) -> None:
    table = table_with_header(tables, "Limit")
    assert table.header == ["Limit", "Value", "Source"]
    problems = []
    for row in table.rows:
        documented = json.loads(first_code(row[1]) or "null")
        source = first_code(row[2])
        actual = _resolve(source or "")
        if not same(documented, actual):
            problems.append(f"{row[0]}: doc says {documented!r}, {source} is {actual!r}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- byte dumps and code


DECODERS = {
    "envelope": (v1.decode_envelope, v1.encode_envelope, v1.Envelope),
    "client": (v1.decode_client_body, v1.encode_body, v1.ClientMessage),
    "daemon": (v1.decode_daemon_body, v1.encode_body, v1.DaemonMessage),
}


def hex_examples(fences: list[Fence]) -> list[tuple[str, bytes, Any, int]]:
    out = []
    for i, fence in enumerate(fences):
        if not fence.info.startswith("msgpack-hex"):
            continue
        words = fence.info.split()
        assert len(words) == 2 and words[1] in DECODERS, (
            f"line {fence.line}: say which decoder reads the dump: ```msgpack-hex envelope|client|daemon"
        )
        assert i + 1 < len(fences) and fences[i + 1].info == "json", (
            f"line {fence.line}: a ```json block with the decoded map must follow the dump"
        )
        assert re.fullmatch(r"[0-9a-f\s]+", fence.body), f"line {fence.line}: a dump holds lowercase hex bytes only"
        out.append((words[1], bytes.fromhex(fence.body), json.loads(fences[i + 1].body), fence.line))
    return out


def test_hex_examples_decode_to_what_the_doc_says(fences: list[Fence]) -> None:
    examples = hex_examples(fences)
    problems = []
    decoded_types = set()
    for kind, raw, shown, line in examples:
        decode, encode, target = DECODERS[kind]
        try:
            typed = decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            problems.append(f"line {line}: v1 cannot decode the {kind} dump: {exc}")
            continue
        decoded_types.add(type(typed))
        wire = msgspec.msgpack.decode(raw)
        if not same(wire, shown):
            problems.append(f"line {line}: the dump is the map {wire!r}, the doc shows {shown!r}")
        if typed != msgspec.convert(shown, target):
            problems.append(f"line {line}: decodes to {typed!r}, the shown map to {msgspec.convert(shown, target)!r}")
        if encode(typed) != raw:
            problems.append(f"line {line}: v1 encodes that {kind} as {encode(typed).hex(' ')}, not as the dump")
    assert not problems, "\n".join(problems)
    for needed in (v1.Envelope, v1.Generate, v1.Delta):
        assert needed in decoded_types, f"the worked example needs a {needed.__name__} dump"


def test_python_snippets_compile_and_need_no_axchat(fences: list[Fence]) -> None:
    snippets = [f for f in fences if f.info == "python"]
    assert snippets, "the doc should carry a Python client snippet"
    for fence in snippets:
        tree = ast.parse(fence.body, filename=f"docs/protocol.md:{fence.line}")
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert imported <= {"os", "sys", "uuid", "time", "msgspec", "zmq"}, f"line {fence.line} imports {imported}"
        compile(tree, f"docs/protocol.md:{fence.line}", "exec")


def test_doc_names_the_socket_defaults(doc: str) -> None:
    from axchat import endpoint

    assert f"${endpoint.ENV_SOCKET}" in doc
    assert f"$XDG_RUNTIME_DIR/axchat/{endpoint.SOCKET_NAME}" in doc
    assert f"/tmp/axchat-<uid>/{endpoint.SOCKET_NAME}" in doc
