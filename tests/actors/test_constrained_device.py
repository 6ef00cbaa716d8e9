"""The device actor with constrained requests, in process on the default engine
(llama.cpp, q8_0): a grammar's mask at every token, and a dead end (llguidance's own
per-step limit, lowered) ending its request with `constraint_failed` while a free
request beside it goes on."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq.asyncio
from bus_teardown import assert_context_terminates, close_actors
from test_device_scheduling import FailLoudly
from tokenizers import Tokenizer

from axchat.actors import grammar
from axchat.actors import messages as m
from axchat.actors.device import constrained
from axchat.actors.device.actor import DeviceActor
from axchat.actors.mailbox import Actor, Bus
from axchat.actors.sampler import SamplerActor
from axchat.actors.token_mask import ConstraintVocab
from axchat.actors.tool_syntax import HERMES
from axchat.protocol import v1

SCHEMA = {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{3}[0-9]{2}$"}, "minItems": 2, "maxItems": 3}


class Tokens(Actor):
    """Stands in for the tokenizer: each request's tokens, and how it ended."""

    def __init__(self, bus: Bus, sup: object, name: str = "tokenizer") -> None:
        self.name = name
        super().__init__(bus, sup)  # type: ignore[arg-type]
        self.tokens: dict[int, list[int]] = {}
        self.ended: dict[int, m.Ended] = {}
        self.changed = asyncio.Event()

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.TokenOut):
            self.tokens.setdefault(msg.rid, []).extend(msg.token_ids)
        elif isinstance(msg, m.Ended):
            self.ended[msg.rid] = msg
        self.changed.set()

    async def until_ended(self, n: int) -> None:
        async with asyncio.timeout(60):
            while len(self.ended) < n:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def rig(tiny_model_dir: Path) -> AsyncIterator[tuple[Bus, Tokens, ConstraintVocab]]:
    from axchat.actors.backends.llamacpp import load

    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    vocab = ConstraintVocab(tok, [tok.token_to_id("<|im_end|>")], tok.get_vocab_size())
    ctx = zmq.asyncio.Context()
    bus = Bus(ctx, "constrained")
    sup = FailLoudly()
    tokens = Tokens(bus, sup)
    actors: list[Actor] = [tokens, SamplerActor(bus, sup), DeviceActor(bus, sup, load.load(str(tiny_model_dir), threads=1), vocab=vocab)]  # type: ignore[arg-type]
    tasks = [asyncio.create_task(a.run()) for a in actors]
    yield bus, tokens, vocab
    await close_actors(bus, actors, tasks)
    assert_context_terminates(ctx)


def admit(rid: int, vocab: ConstraintVocab, *, constrained: bool, **sampling: object) -> m.Admit:
    text = ""
    if constrained:
        text = grammar.build(v1.Constraint(kind="json_schema", schema=json.dumps(SCHEMA)), HERMES, vocab.get()).grammar
    return m.Admit(
        rid=rid, label=f"r{rid}", client=f"c{rid}", prompt_ids=[5 + i for i in range(8)],
        sampling=v1.Sampling(max_tokens=200, **sampling),  # type: ignore[arg-type]
        eos_ids=list(vocab.get().eos_tokens), grammar=text,
    )


async def send(bus: Bus, *msgs: m.ActorMessage) -> None:
    sender = Tokens(bus, FailLoudly(), "test-sender")
    try:
        for msg in msgs:
            await sender.send("device", msg)
    finally:
        sender.discard()


async def test_constrained_greedy_and_sampled_beside_free_all_valid(rig) -> None:  # type: ignore[no-untyped-def]
    bus, tokens, vocab = rig
    await send(bus, admit(1, vocab, constrained=True), admit(2, vocab, constrained=True, temperature=1.0, seed=3),
               admit(3, vocab, constrained=False, ignore_eos=True))
    await tokens.until_ended(3)
    for rid in (1, 2):
        assert tokens.ended[rid].reason == "stop", tokens.ended[rid]
        items = json.loads(vocab.get().decode_str(tokens.tokens[rid]))
        assert 2 <= len(items) <= 3 and all(len(s) == 5 for s in items)
    assert tokens.ended[3].reason == "length" and len(tokens.tokens[3]) == 200


async def test_a_dead_end_ends_its_request_with_constraint_failed(rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bus, tokens, vocab = rig
    # llguidance's cap on parser items per token, lowered so that this grammar passes it
    # for a few tokens and then cannot go on: the engine's own failure, not a fake.
    monkeypatch.setitem(grammar.LIMITS, "step_max_items", 5)
    await send(bus, admit(1, vocab, constrained=True), admit(2, vocab, constrained=False, ignore_eos=True))
    await tokens.until_ended(2)
    dead = tokens.ended[1]
    assert dead.reason == "error" and dead.error is not None and dead.error.code == "constraint_failed", dead
    assert 0 < dead.completion_tokens < 200
    assert tokens.ended[2].reason == "length" and len(tokens.tokens[2]) == 200


async def test_a_slow_compile_holds_only_its_own_request(rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A matcher still compiling when its prompt is in (held here by a gate) leaves the
    step loop free: a free stream beside it runs to its end meanwhile."""
    bus, tokens, vocab = rig
    gate, entered = threading.Event(), threading.Event()
    real = constrained.compile_matcher

    def held_compile(*args: object) -> object:
        entered.set()
        assert gate.wait(60)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(constrained, "compile_matcher", held_compile)
    await send(bus, admit(1, vocab, constrained=True), admit(2, vocab, constrained=False, ignore_eos=True))
    async with asyncio.timeout(60):
        while 2 not in tokens.ended:
            tokens.changed.clear()
            await tokens.changed.wait()
    assert entered.is_set() and 1 not in tokens.tokens and 1 not in tokens.ended
    assert len(tokens.tokens[2]) == 200
    gate.set()
    await tokens.until_ended(2)
    assert tokens.ended[1].reason == "stop"
    items = json.loads(vocab.get().decode_str(tokens.tokens[1]))
    assert 2 <= len(items) <= 3
