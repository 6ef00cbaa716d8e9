"""Grammar masks (actors/token_mask.py) on the test model's real tokenizer: what a
constrained choice may pick, masks filled together, and a dead end stopping a run."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from tokenizers import Tokenizer

from axchat.actors import grammar
from axchat.actors.device import run_ahead
from axchat.actors.token_choice import SequenceSampler
from axchat.actors.token_mask import ConstrainedChoice, ConstraintVocab, TokenMask, compile_matcher, fill_together
from axchat.actors.tool_syntax import HERMES
from axchat.protocol import v1

SCHEMA = {"type": "object", "properties": {"k": {"enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["k", "n"], "additionalProperties": False}


@pytest.fixture(scope="module")
def vocab(tiny_model_dir: Path) -> ConstraintVocab:
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|im_end|>")
    return ConstraintVocab(tok, [eos], tok.get_vocab_size())


def mask_for(vocab: ConstraintVocab, schema: dict[str, object]) -> TokenMask:
    compiled = grammar.build(v1.Constraint(kind="json_schema", schema=json.dumps(schema)), HERMES, vocab.get())
    return TokenMask(compile_matcher(vocab, compiled.grammar), vocab.get().vocab_size)


def test_greedy_choice_over_random_logits_spells_valid_json(vocab: ConstraintVocab) -> None:
    rng = np.random.default_rng(0)
    eos = vocab.get().eos_tokens
    choice = ConstrainedChoice(SequenceSampler(v1.Sampling(), []), mask_for(vocab, SCHEMA))
    tokens: list[int] = []
    for _ in range(200):
        token = choice.choose(rng.standard_normal(vocab.get().vocab_size).astype(np.float32))
        if token in eos:
            break
        tokens.append(token)
    assert choice.mask.failed is None
    jsonschema.validate(json.loads(vocab.get().decode_str(tokens)), SCHEMA)


def test_masks_filled_together_equal_masks_filled_alone(vocab: ConstraintVocab) -> None:
    together = [mask_for(vocab, SCHEMA) for _ in range(3)]
    alone = [mask_for(vocab, SCHEMA) for _ in range(3)]
    fill_together(together)
    for mask in alone:
        fill_together([mask])
    for a, b in zip(together, alone, strict=True):
        assert a.filled and np.array_equal(a.bits, b.bits) and a.bits.any()


def test_a_dead_end_stops_its_lane_and_leaves_the_others(vocab: ConstraintVocab) -> None:
    n = vocab.get().vocab_size
    stuck = mask_for(vocab, SCHEMA)
    stuck.consume(vocab.get().tokenize_str("x")[0])  # not JSON: the matcher is in error now
    assert stuck.failed is not None

    def decode(rids: list[int], tokens: list[int]) -> np.ndarray:
        return np.zeros((len(rids), n), dtype=np.float32)

    free = run_ahead.Lane(2, 0, lambda row: 5, 4, frozenset())
    dead = run_ahead.Lane(1, 0, ConstrainedChoice(SequenceSampler(v1.Sampling(), []), stuck).choose, 50, frozenset(), stuck)
    run_ahead.run(run_ahead.without_drafts(decode), [dead, free], threading.Event(), budget_ms=1e9)
    assert len(dead.chosen) == 1 and len(free.chosen) == 4
