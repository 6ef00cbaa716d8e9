"""Tool-call syntax per model family (actors/tool_syntax.py): which one a template
asks for, splitting a streamed reply into text and calls, and reading the calls; with
the grammar on the test model's tokenizer, random logits always spell a valid call."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from tokenizers import Tokenizer

from axchat.actors import grammar
from axchat.actors.token_choice import SequenceSampler
from axchat.actors.token_mask import ConstrainedChoice, ConstraintVocab, TokenMask, compile_matcher
from axchat.actors.tool_syntax import HERMES, LLAMA3, CallSplitter, ToolSyntax, parse_calls, syntax_for
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
        assert calls and all(c.name in ("f", "g") and (choice == "required" or c.name == choice) for c in calls)
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), ARGS)
