"""Reading a reply's tool calls as their text streams in: each call's name as soon as it
is whole, then its arguments' JSON text piece by piece, as OpenAI-style servers stream
`delta.tool_calls`.

The grammar (grammar.py) makes every call one JSON object holding the name and the
arguments after the syntax's opening, so a scanner of JSON's nesting (strings, escapes,
depth) finds where both begin and end without parsing a value twice. The pieces of a
call's arguments joined are exactly its `arguments` in the finished reply's list."""

from __future__ import annotations

import json

from axchat.actors.tool_syntax import CallSplitter, ToolSyntax
from axchat.protocol.v1 import ToolCall, ToolCallPiece
from axchat.tool_call_pieces import merged_pieces


class _Call:
    """The call being read: where its object is, and what of it is known so far."""

    def __init__(self, index: int, call_id: str) -> None:
        self.index = index
        self.id = call_id
        self.name: str | None = None
        self.announced = False  # its first piece (id and name) went out
        self.args_start = -1  # where the arguments' value begins in the text, once seen
        self.args_end = -1  # and ends, once it has
        self.sent_to = -1  # how far the arguments went out in pieces


class CallStream:
    """Feed it the reply's call text (everything from the first opening on, as
    tool_syntax.CallSplitter keeps it); it answers the pieces that text completes."""

    def __init__(self, syntax: ToolSyntax, id_prefix: str) -> None:
        self._syntax = syntax
        self._id_prefix = id_prefix
        self._text = ""
        self._pos = 0  # characters scanned
        self._call: _Call | None = None  # inside a call's object
        self._done: list[ToolCall] = []
        self._count = 0
        # The JSON scanner's state, inside the current call's object.
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._string_start = -1  # a string at depth 1: a key or the name's value
        self._key: str | None = None  # the key whose value comes next at depth 1
        self._after_colon = False
        self._value_key: str | None = None  # the depth-1 value being read belongs to this key

    @property
    def calls(self) -> list[ToolCall]:
        """The calls read whole so far (a call cut short by the reply's end is not)."""
        return list(self._done)

    def feed(self, text: str) -> list[ToolCallPiece]:
        self._text += text
        pieces: list[ToolCallPiece] = []
        while self._pos < len(self._text):
            if self._call is None:
                if not self._open():
                    break
                continue
            self._scan_call(pieces)
        call = self._call
        if call is not None and call.announced and call.args_start >= 0:
            if call.args_end >= 0:
                self._send_args(call, call.args_end, pieces)
            elif self._text[call.args_start] in "{[":  # a bare value goes out whole, at its end
                self._send_args(call, self._pos, pieces)
        return pieces

    def _open(self) -> bool:
        """Move to the next call's object; False while its opening has not come."""
        opening = self._syntax.opening
        at = self._text.find(opening, self._pos)
        if at < 0:
            # Keep the scan where an opening may still be completed by the next text.
            self._pos = max(self._pos, len(self._text) - len(opening) + 1)
            return False
        self._pos = at + len(opening) - (1 if opening.endswith("{") else 0)
        self._call = _Call(self._count, f"call_{self._id_prefix}_{self._count}")
        self._count += 1
        self._depth, self._in_string, self._escaped = 0, False, False
        self._key, self._after_colon, self._value_key = None, False, None
        return True

    def _scan_call(self, pieces: list[ToolCallPiece]) -> None:
        """Scan the characters that came, up to the end of the current call's object."""
        call = self._call
        assert call is not None
        text, i = self._text, self._pos
        while i < len(text):
            ch = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                    if self._depth == 1:
                        self._string_ended(call, i, pieces)
                i += 1
                continue
            if ch.isspace():
                i += 1
                continue
            if self._depth == 1 and self._after_colon and self._value_key is None:
                self._value_key, self._after_colon = self._key, False
                if self._value_key == self._syntax.args_key:
                    call.args_start = i
            if ch == '"':
                self._in_string = True
                if self._depth == 1:
                    self._string_start = i
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 1 and self._value_key == self._syntax.args_key:
                    call.args_end = i + 1  # the arguments' object (or array) closed
                if self._depth == 0:
                    self._value_ended(call, i)
                    self._pos = i + 1
                    self._finish(call, pieces)
                    return
            elif ch == "," and self._depth == 1:
                self._value_ended(call, i)
            elif ch == ":" and self._depth == 1:
                self._after_colon = True
            i += 1
        self._pos = i

    def _string_ended(self, call: _Call, end: int, pieces: list[ToolCallPiece]) -> None:
        raw = self._text[self._string_start : end + 1]
        if self._value_key is None and not self._after_colon:
            self._key = json.loads(raw)  # a key
        elif self._value_key == "name" and call.name is None:
            call.name = json.loads(raw)
            call.announced = True
            pieces.append(ToolCallPiece(index=call.index, id=call.id, name=call.name))

    def _value_ended(self, call: _Call, at: int) -> None:
        """The depth-1 value that was being read ends just before `at` (a , or the }) ."""
        if self._value_key == self._syntax.args_key and call.args_end < 0:
            call.args_end = len(self._text[:at].rstrip())
        self._key, self._after_colon, self._value_key = None, False, None

    def _send_args(self, call: _Call, upto: int, pieces: list[ToolCallPiece]) -> None:
        start = max(call.sent_to, call.args_start)
        if upto > start:
            pieces.append(ToolCallPiece(index=call.index, arguments=self._text[start:upto]))
            call.sent_to = upto

    def _finish(self, call: _Call, pieces: list[ToolCallPiece]) -> None:
        self._call = None
        if call.name is None:
            return  # the grammar always writes a name; an object without one is no call
        if call.args_start < 0:  # no arguments written: the call takes none
            arguments = "{}"
            pieces.append(ToolCallPiece(index=call.index, arguments=arguments))
        else:
            self._send_args(call, call.args_end, pieces)
            arguments = self._text[call.args_start : call.args_end]
        self._done.append(ToolCall(id=call.id, name=call.name, arguments=arguments))


def parse_calls(calls_text: str, syntax: ToolSyntax, id_prefix: str) -> list[ToolCall]:
    """The calls in `calls_text` (from the first opening on), read at once."""
    stream = CallStream(syntax, id_prefix)
    stream.feed(calls_text)
    return stream.calls


class ToolReply:
    """A tools request's reply as the deltas carry it: the text before its calls, and
    the calls' pieces as their text comes in."""

    def __init__(self, syntax: ToolSyntax, id_prefix: str) -> None:
        self._split = CallSplitter(syntax)
        self._stream = CallStream(syntax, id_prefix)
        self._fed = 0  # characters of the calls' text handed to the stream
        self._pieces: list[ToolCallPiece] = []

    @property
    def calls(self) -> list[ToolCall]:
        return self._stream.calls

    def feed(self, text: str) -> str:
        """The part of `text` that is reply text; the rest goes to the calls."""
        shown = self._split.feed(text)
        self._more()
        return shown

    def flush(self) -> str:
        """At the reply's end: held text that never became a call."""
        shown = self._split.flush()
        self._more()
        return shown

    def pieces(self) -> list[ToolCallPiece]:
        """The calls' pieces since the last call of this, joined where they can be."""
        pieces, self._pieces = merged_pieces(self._pieces), []
        return pieces

    def _more(self) -> None:
        calls_text = self._split.calls_text
        if calls_text is not None and len(calls_text) > self._fed:
            new, self._fed = calls_text[self._fed :], len(calls_text)
            self._pieces += self._stream.feed(new)
