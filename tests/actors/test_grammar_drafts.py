"""Speculation under a grammar (actors/device/grammar_drafts.py, token_mask.py) on the
test model's real tokenizer: what a constrained stream proposes, the masks filled for
each proposed row, and runs of steps with proposals choosing exactly the tokens of runs
without them, on a scripted model whose rows depend only on what was fed before."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from axchat.actors import grammar
from axchat.actors.device import run_ahead
from axchat.actors.device.drafts import NgramDrafter, OracleDrafter, Speculation
from axchat.actors.device.grammar_drafts import GrammarDrafter, grammar_speculation
from axchat.actors.device.run_ahead import Lane
from axchat.actors.token_choice import SequenceSampler
from axchat.actors.token_mask import ConstrainedChoice, ConstraintVocab, TokenMask, compile_matcher, fill_together
from axchat.actors.tool_syntax import HERMES
from axchat.protocol import v1

FORM = {
    "type": "object",
    "properties": {
        "customer_full_name": {"type": "string", "maxLength": 6},
        "order_total_in_whole_cents": {"type": "integer", "minimum": 0, "maximum": 99},
        "express_delivery_requested": {"type": "boolean"},
    },
    "required": ["customer_full_name", "order_total_in_whole_cents", "express_delivery_requested"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def vocab(tiny_model_dir: Path) -> ConstraintVocab:
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|im_end|>")
    assert eos is not None
    return ConstraintVocab(tok, [eos], tok.get_vocab_size())


def form_mask(vocab: ConstraintVocab) -> TokenMask:
    compiled = grammar.build(v1.Constraint(kind="json_schema", schema=json.dumps(FORM)), HERMES, vocab.get())
    return TokenMask(compile_matcher(vocab, compiled.grammar), vocab.get().vocab_size)


def greedy_under(mask: TokenMask) -> ConstrainedChoice:
    return ConstrainedChoice(SequenceSampler(v1.Sampling(temperature=0.0), []), mask)


def test_forced_tokens_come_first_then_guesses_the_grammar_allows(vocab: ConstraintVocab) -> None:
    mask = form_mask(vocab)
    forced = mask.matcher.compute_ff_tokens()
    assert vocab.get().decode_str(forced).startswith('{"customer_full_name')
    value = vocab.get().tokenize_str(' "bob", "order')
    drafter = GrammarDrafter(NgramDrafter([*forced[-3:], *value]), mask)  # the prompt had the name and a value
    proposal = drafter.propose(len(forced) + 4)
    assert proposal[: len(forced)] == forced and len(proposal) > len(forced)
    assert mask.matcher.validate_tokens(proposal) == len(proposal)
    assert drafter.propose(3) == forced[:3]  # short of room: forced tokens only
    # A guess the grammar refuses ends the proposal there.
    refused = GrammarDrafter(OracleDrafter([*forced, *vocab.get().tokenize_str("}}}")], frozenset()), mask)
    assert refused.propose(len(forced) + 3) == forced


def test_a_proposals_masks_are_each_positions_own(vocab: ConstraintVocab) -> None:
    walked = form_mask(vocab)
    rng = np.random.default_rng(1)
    choice = greedy_under(walked)
    tokens = [choice.choose(rng.standard_normal(vocab.get().vocab_size).astype(np.float32)) for _ in range(30)]
    for start in (0, 5, 17):
        ahead = form_mask(vocab)
        ahead.matcher.consume_tokens(tokens[:start])
        assert ahead.expect([*tokens[start : start + 8], 10**6 % vocab.get().vocab_size]) == tokens[start : start + 8]
        fill_together([ahead])
        alone = form_mask(vocab)
        alone.matcher.consume_tokens(tokens[:start])
        for token in tokens[start : start + 8]:
            fill_together([alone])
            assert np.array_equal(ahead.bits, alone.bits) and ahead.filled
            ahead.consume(token)
            alone.consume(token)
        assert ahead.matcher.compute_ff_tokens() == alone.matcher.compute_ff_tokens()


def test_masks_of_several_proposals_filled_together_equal_each_filled_alone(vocab: ConstraintVocab) -> None:
    rng = np.random.default_rng(2)
    walk = greedy_under(form_mask(vocab))
    tokens = [walk.choose(rng.standard_normal(vocab.get().vocab_size).astype(np.float32)) for _ in range(24)]
    cases = [(0, 6), (3, 0), (9, 2), (14, 7)]  # (tokens chosen before, proposal length): one proposes nothing

    def masks() -> list[TokenMask]:
        out = []
        for start, k in cases:
            mask = form_mask(vocab)
            mask.matcher.consume_tokens(tokens[:start])
            mask.expect(tokens[start : start + k])
            out.append(mask)
        return out

    together, alone = masks(), masks()
    fill_together(together)
    for mask in alone:
        fill_together([mask])
    for (start, k), a, b in zip(cases, together, alone, strict=True):
        for token in tokens[start : start + k + 1]:
            assert a.filled and np.array_equal(a.bits, b.bits)
            a.consume(token)
            b.consume(token)
        assert not a.filled  # past the proposal: the next fill is the next step's


class Model:
    """A scripted `decode_drafts`: each sequence's rows are random, seeded by everything
    it was fed up to that row, so they depend on its history and nothing else (as a
    model's); the rejected proposals' KV is trimmed."""

    def __init__(self, vocab_size: int) -> None:
        self.n = vocab_size
        self.fed: dict[int, list[int]] = {}
        self.steps = 0

    def row(self, history: Sequence[int]) -> np.ndarray:
        seed = int.from_bytes(
            hashlib.blake2b(np.asarray(history, dtype=np.int64).tobytes(), digest_size=8).digest(), "little"
        )
        return np.random.default_rng(seed).standard_normal(self.n).astype(np.float32)

    def __call__(self, rids: Sequence[int], tokens: Sequence[int], drafts: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self.steps += 1
        out = []
        for rid, token, draft in zip(rids, tokens, drafts, strict=True):
            rows = []
            for t in (token, *draft):
                self.fed.setdefault(rid, []).append(t)
                rows.append(self.row(self.fed[rid]))
            out.append(np.stack(rows))
        return out

    def trim(self, rid: int, drop: int) -> None:
        del self.fed[rid][-drop:]


def constrained_lane(vocab: ConstraintVocab, model: Model, rid: int, spec: Speculation | None, mask: TokenMask) -> Lane:
    choice = greedy_under(mask)
    first = choice.choose(model.row([-rid]))  # the prompt's last row
    if spec is not None:
        spec.settle((), (first,))
    return Lane(rid, first, choice.choose, 120, frozenset(vocab.get().eos_tokens), mask, spec)


@pytest.mark.parametrize("drafts", ["ngram", "oracle-right", "oracle-half-wrong"])
def test_runs_with_constrained_proposals_choose_the_same_tokens(vocab: ConstraintVocab, drafts: str) -> None:
    plain_model = Model(vocab.get().vocab_size)
    plain = constrained_lane(vocab, plain_model, 1, None, form_mask(vocab))
    truth = [plain.token]
    run_ahead.run(plain_model, [plain], threading.Event(), budget_ms=60_000)
    truth += plain.chosen
    assert truth[-1] in vocab.get().eos_tokens  # the form was finished

    model = Model(vocab.get().vocab_size)
    mask = form_mask(vocab)
    if drafts == "ngram":
        inner: NgramDrafter | OracleDrafter = NgramDrafter([5, 6, 7])
    else:
        inner = OracleDrafter(
            truth, frozenset(range(0, len(truth), 2)) if drafts == "oracle-half-wrong" else frozenset()
        )
    spec = grammar_speculation(inner, mask)
    fast = constrained_lane(vocab, model, 1, spec, mask)
    run_ahead.run(model, [fast], threading.Event(), budget_ms=60_000, trim=model.trim, row_budget=8)
    assert [truth[0], *fast.chosen] == truth
    assert model.fed[1] == plain_model.fed[1]  # the KV holds what a run without proposals fed
    assert spec.accepted > 0 and model.steps < plain_model.steps  # the forced names at least
    if drafts == "oracle-right":  # all kept but an end-of-turn token proposed last (the step's own choice)
        assert spec.accepted >= spec.proposed - 1
