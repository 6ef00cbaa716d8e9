"""A request's constraint checked and compiled before it may queue: on one thread of
its own (a costly schema never takes an encode thread from other clients) and within a
time limit, so a hostile schema gets a clear refusal instead of a stalled request."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from axchat.actors import grammar
from axchat.actors import messages as m
from axchat.actors.token_mask import ConstraintVocab
from axchat.actors.tool_syntax import ToolSyntax, syntax_for
from axchat.protocol.v1 import Constraint

# Wall-clock bound on one check. llguidance's own limits (grammar.LIMITS) bound its work;
# this also covers building the vocabulary on first use (about a second for 128k tokens).
COMPILE_LIMIT_S = 10.0


class ConstraintChecker:
    def __init__(self, vocab: ConstraintVocab | None) -> None:
        self._vocab = vocab
        self.syntax: ToolSyntax = syntax_for(vocab.chat_template if vocab is not None else None)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axchat-check")

    async def check(self, constraint: Constraint) -> grammar.Compiled | m.Failure:
        if self._vocab is None:
            return m.Failure(code="invalid_field", message="this daemon cannot constrain replies", param="constraint")
        vocab = self._vocab

        def compile_it() -> grammar.Compiled | m.Failure:
            try:
                tokenizer = vocab.get()
            except TypeError as exc:  # a tokenizer with no tokenizer.json behind it
                return m.Failure(code="invalid_field", message=f"constraints cannot be used here: {exc}", param="constraint")
            try:
                return grammar.build(constraint, self.syntax, tokenizer)
            except grammar.BadConstraint as exc:
                return m.Failure(code="invalid_field", message=exc.message, param=exc.param)

        future = asyncio.get_running_loop().run_in_executor(self._pool, compile_it)
        try:
            return await asyncio.wait_for(future, COMPILE_LIMIT_S)
        except TimeoutError:
            text = f"the constraint took longer than {COMPILE_LIMIT_S:g} s to compile; simplify it"
            return m.Failure(code="invalid_field", message=text, param="constraint")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
