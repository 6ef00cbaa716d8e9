"""Tool-call syntax per model family (actors/tool_syntax.py): which one a template
asks for, splitting a streamed reply into text and calls, and reading the calls as they
stream (actors/call_stream.py); with the grammar on the test model's tokenizer, random
logits always spell a valid call, and its streamed pieces join into it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from tokenizers import Tokenizer

from axchat.actors import grammar
from axchat.actors.call_stream import ToolReply, parse_calls
from axchat.actors.token_choice import SequenceSampler
from axchat.actors.token_mask import ConstrainedChoice, ConstraintVocab, TokenMask, compile_matcher
from axchat.actors.tool_syntax import HERMES, LLAMA3, CallSplitter, ToolSyntax, syntax_for
from axchat.protocol import v1

QWEN_LIKE = "{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>\n{{ call }}\n</tool_call>"
LLAMA_LIKE = "{%- if message.role == 'ipython' %}<|python_tag|>{{ tools }}"
ARGS = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"], "additionalProperties": False}


def test_the_template_picks_the_syntax() -> None:
    assert syntax_for(QWEN_LIKE) is HERMES
    assert syntax_for(LLAMA_LIKE) is LLAMA3
    assert syntax_for(None) is HERMES and syntax_for("{{ messages }}") is HERMES  # the documented default


def feed_in_pieces(splitter: CallSplitter, text: str, size: int) -> str:
    shown = "".join(splitter.feed(text[i : i + size]) for i in range(0, len(text), size))
    return shown + splitter.flush()


@pytest.mark.parametrize("size", [1, 3, 100])
def test_text_before_a_call_is_shown_and_the_call_is_not(size: int) -> None:
    reply = 'Let me check. <tool_c is not it. <tool_call>\n{"name": "f", "arguments": {"n": 1}}\n</tool_call>'
    splitter = CallSplitter(HERMES)
    assert feed_in_pieces(splitter, reply, size) == "Let me check. <tool_c is not it. "
    assert splitter.calls_text is not None
    calls = parse_calls(splitter.calls_text, HERMES, "x")
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"n": 1})]


def test_llama3_calls_are_a_leading_json_object() -> None:
    splitter = CallSplitter(LLAMA3)
    assert feed_in_pieces(splitter, '{"name": "f", "parameters": {"n": 2}}', 4) == ""
    calls = parse_calls(splitter.calls_text or "", LLAMA3, "y")
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"n": 2})]
    text = CallSplitter(LLAMA3)
    assert feed_in_pieces(text, "No call {here}", 2) == "No call {here}" and text.calls_text is None


def test_a_call_cut_short_is_left_out() -> None:
    assert parse_calls('<tool_call>\n{"name": "f", "argu', HERMES, "z") == []


def stream_in_pieces(reply: str, syntax: ToolSyntax, size: int) -> tuple[str, list[v1.ToolCallPiece], ToolReply]:
    tool_reply = ToolReply(syntax, "s")
    shown, pieces = "", []
    for i in range(0, len(reply), size):
        shown += tool_reply.feed(reply[i : i + size])
        pieces += tool_reply.pieces()
    shown += tool_reply.flush()
    return shown, pieces + tool_reply.pieces(), tool_reply


def joined(pieces: list[v1.ToolCallPiece]) -> dict[int, tuple[str, str, str]]:
    """Each call's id, name and arguments, as an OpenAI client reassembles its deltas."""
    calls: dict[int, tuple[str, str, str]] = {}
    for p in pieces:
        call_id, name, args = calls.get(p.index, ("", "", ""))
        assert not (p.name and name), "a call is named once"
        calls[p.index] = (call_id + p.id, name + p.name, args + p.arguments)
    return calls


TRICKY_ARGS = {"s": 'a}"{ ,: \\', "l": [1, {"x": [2, "]"]}], "u": "\u00e9t\u00e9"}


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_calls_stream_name_first_then_arguments_that_join_into_the_call(size: int) -> None:
    body = json.dumps(TRICKY_ARGS)
    reply = (
        'Checking. <tool_call>\n{"name": "f", "arguments": ' + body + '}\n</tool_call>'
        '<tool_call>\n{"name":"g","arguments":{ }}\n</tool_call>'
    )
    shown, pieces, tool_reply = stream_in_pieces(reply, HERMES, size)
    assert shown == "Checking. "
    calls = tool_reply.calls
    assert [(c.id, c.name, c.arguments) for c in calls] == [("call_s_0", "f", body), ("call_s_1", "g", "{ }")]
    assert joined(pieces) == {0: ("call_s_0", "f", body), 1: ("call_s_1", "g", "{ }")}
    assert pieces[0].name == "f"  # a call's first piece names it
    if size == 1:  # the name goes out as soon as it is whole, arguments as they come
        assert not pieces[0].arguments and sum(1 for p in pieces if p.index == 0 and p.arguments) > 1


def test_a_call_cut_short_streamed_a_part_but_is_no_call() -> None:
    _, pieces, tool_reply = stream_in_pieces('<tool_call>\n{"name": "f", "arguments": {"n": ', HERMES, 3)
    assert tool_reply.calls == []
    assert joined(pieces) == {0: ("call_s_0", "f", '{"n": ')}


def test_llama3_calls_stream_their_parameters() -> None:
    shown, pieces, tool_reply = stream_in_pieces('{"name": "f", "parameters": {"n": 2}}', LLAMA3, 2)
    assert shown == "" and joined(pieces) == {0: ("call_s_0", "f", '{"n": 2}')}
    assert [(c.name, c.arguments) for c in tool_reply.calls] == [("f", '{"n": 2}')]


@pytest.fixture(scope="module")
def vocab(tiny_model_dir: Path) -> ConstraintVocab:
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    return ConstraintVocab(tok, [tok.token_to_id("<|im_end|>")], tok.get_vocab_size())


@pytest.mark.parametrize("syntax", [HERMES, LLAMA3], ids=["hermes", "llama3"])
@pytest.mark.parametrize("choice", ["required", "g"])
def test_random_logits_spell_only_valid_calls(vocab: ConstraintVocab, syntax: ToolSyntax, choice: str) -> None:
    tools = [v1.ToolSpec(name="f", parameters=json.dumps(ARGS)), v1.ToolSpec(name="g", parameters=json.dumps(ARGS))]
    compiled = grammar.build(v1.Constraint(kind="tools", tools=tools, tool_choice=choice), syntax, vocab.get())
    rng = np.random.default_rng(1)
    for seed in range(3):
        choose = ConstrainedChoice(SequenceSampler(v1.Sampling(temperature=1.0, seed=seed), []),
                                   TokenMask(compile_matcher(vocab, compiled.grammar), vocab.get().vocab_size))
        out: list[int] = []
        for _ in range(300):
            token = choose.choose(rng.standard_normal(vocab.get().vocab_size).astype(np.float32))
            if token in vocab.get().eos_tokens:
                break
            out.append(token)
        splitter = CallSplitter(syntax)
        assert feed_in_pieces(splitter, vocab.get().decode_str(out), 5).strip() == ""
        calls = parse_calls(splitter.calls_text or "", syntax, "t")
        _, pieces, _ = stream_in_pieces(vocab.get().decode_str(out), syntax, 1)
        assert joined(pieces) == {i: (f"call_s_{i}", c.name, c.arguments) for i, c in enumerate(calls)}
        assert calls and all(c.name in ("f", "g") and (choice == "required" or c.name == choice) for c in calls)
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), ARGS)
