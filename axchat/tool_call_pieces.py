"""Streamed tool-call pieces (protocol `delta.tool_calls`) that came together, joined:
the daemon's tokenizer and the web bridge both send fewer, longer pieces."""

from __future__ import annotations

from axchat.protocol.v1 import ToolCallPiece


def merged_pieces(pieces: list[ToolCallPiece]) -> list[ToolCallPiece]:
    """Pieces that came together as few as they can be: a call's arguments text joined."""
    out: list[ToolCallPiece] = []
    for piece in pieces:
        last = out[-1] if out else None
        if last is not None and last.index == piece.index and not piece.name:
            out[-1] = ToolCallPiece(index=last.index, id=last.id, name=last.name, arguments=last.arguments + piece.arguments)
        else:
            out.append(piece)
    return out
