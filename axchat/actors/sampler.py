"""Sampler actor: turns each row of logits from the device into the next token."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from axchat.actors import messages as m
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.token_choice import SequenceSampler


class SamplerActor(Actor):
    name = "sampler"

    def __init__(self, bus: Bus, supervisor: Supervisor) -> None:
        super().__init__(bus, supervisor)
        self._sequences: dict[int, SequenceSampler] = {}
        # Which device actor each sequence's tokens go back to (several in one daemon).
        self._reply_to: dict[int, str] = {}
        # Top-p sorts the vocabulary (milliseconds at 128k tokens): off the loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axchat-sample")

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.Logits):
            seq = self._sequences.get(msg.rid)
            if seq is None:
                if msg.sampling is None:
                    return  # the sequence was forgotten while its logits were in flight
                seq = SequenceSampler(msg.sampling, msg.context_ids or [])
                self._sequences[msg.rid] = seq
                self._reply_to[msg.rid] = msg.reply_to
            logits = np.frombuffer(msg.data, dtype=np.float32)
            # Only sampled requests come here: the device actor picks greedy tokens itself.
            token = await asyncio.get_running_loop().run_in_executor(self._pool, seq.choose, logits)
            await self.send(self._reply_to.get(msg.rid, "device"), m.Sampled(rid=msg.rid, token_id=token))
        elif isinstance(msg, m.ForgetSequence):
            self._sequences.pop(msg.rid, None)
            self._reply_to.pop(msg.rid, None)
        else:
            raise TypeError(f"sampler got unexpected {type(msg).__name__}")

    async def on_close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
