"""Tokenizer actor: chat template and encoding on the way in; incremental,
UTF-8-safe detokenization and stop strings on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from axchat.actors import messages as m
from axchat.actors.call_stream import ToolReply
from axchat.actors.chat_template import ChatTemplateError
from axchat.actors.constraint_check import ConstraintChecker
from axchat.actors.detokenizer import IncrementalDetokenizer, StopMatcher
from axchat.actors.device.turn_end import end_of_turn
from axchat.actors.grammar import Compiled
from axchat.actors.mailbox import Actor, Bus, Supervisor
from axchat.actors.prompt_fit import PromptFitter, PromptTooLong, longest_token_chars, prompt_field
from axchat.actors.token_mask import ConstraintVocab
from axchat.actors.tool_syntax import template_knows_tools, tools_preamble
from axchat.actors.tool_turns import template_message, template_tools
from axchat.protocol.v1 import ChatMessage, ToolCallPiece

log = logging.getLogger(__name__)

# Encodes for different clients run side by side on this many threads; one client's
# requests run one at a time, so a client sending large requests back to back holds
# at most one thread and the others' short requests go straight through.
ENCODE_THREADS = 4


@dataclass
class _Stream:
    label: str
    trimmed_messages: int
    received_ns: int
    cpu_ns: int
    tokenize_ms: float
    detok: IncrementalDetokenizer
    stops: StopMatcher
    calls: ToolReply | None = None  # a tools request: its calls, apart from the deltas' text
    pending_ids: list[int] = field(default_factory=list)
    emitted_tokens: int = 0


class TokenizerActor(Actor):
    name = "tokenizer"

    def __init__(
        self,
        bus: Bus,
        supervisor: Supervisor,
        tokenizer: TextTokenizer,
        *,
        context_length: int,
        eos_ids: Sequence[int],
        reply_reserve: int | None = None,
        vocab: ConstraintVocab | None = None,
    ) -> None:
        super().__init__(bus, supervisor)
        self._tok = tokenizer
        self._context_length = context_length
        self._reply_reserve = reply_reserve or context_length // 8
        self._eos_ids = sorted(set(eos_ids))
        self._pool = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="axchat-tokenize")
        self._threads = asyncio.Semaphore(ENCODE_THREADS)  # FIFO: clients take turns
        self._client_turns: dict[str, tuple[asyncio.Lock, int]] = {}
        self._encoding: dict[int, asyncio.Task[None]] = {}
        self._cancelled_while_encoding: set[int] = set()
        self._streams: dict[int, _Stream] = {}
        self._has_template = tokenizer.chat_template is not None
        self._constraints = ConstraintChecker(vocab)
        self._fitter = PromptFitter(
            self._encode_text,
            self._render_chat,
            context_length=context_length,
            max_token_chars=longest_token_chars(tokenizer),
        )
        self.length_floor = self._fitter.floor  # the front door refuses by the same bound

    async def handle(self, msg: m.ActorMessage) -> None:
        if isinstance(msg, m.Encode):
            task = asyncio.create_task(self._encode(msg), name=f"encode-{msg.rid}")
            self._encoding[msg.rid] = task
            task.add_done_callback(functools.partial(self._encode_done, msg))
        elif isinstance(msg, m.TokenOut):
            await self._token(msg)
        elif isinstance(msg, m.Ended):
            await self._ended(msg)
        elif isinstance(msg, (m.QueuePosition, m.Loading)):
            await self.send("reply", msg)  # same pipe as the text that follows it
        elif isinstance(msg, m.ForgetClient):
            await self.send("device", msg)
        elif isinstance(msg, m.CancelRequest):
            if msg.rid in self._encoding:
                self._cancelled_while_encoding.add(msg.rid)
            else:
                await self.send("device", msg)
        else:
            raise TypeError(f"tokenizer got unexpected {type(msg).__name__}")

    def _encode_done(self, msg: m.Encode, task: asyncio.Task[None]) -> None:
        self._encoding.pop(msg.rid, None)
        self._cancelled_while_encoding.discard(msg.rid)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self.supervisor.on_handler_error(self, msg, exc)

    async def _encode(self, msg: m.Encode) -> None:
        # A constraint is checked on its own thread while the prompt is encoded: its
        # compile stays off the first token's path.
        checking = None if msg.constraint is None else asyncio.ensure_future(self._constraints.check(msg.constraint))
        try:
            await self._encode_checked(msg, checking)
        finally:
            if checking is not None:
                checking.cancel()  # a no-op once awaited; else its answer is not needed

    async def _encode_checked(self, msg: m.Encode, checking: asyncio.Future[Compiled | m.Failure] | None) -> None:
        t0 = time.perf_counter()
        reserve = min(msg.sampling.max_tokens, self._reply_reserve)
        tools = template_tools(msg.constraint) if msg.constraint is not None and msg.constraint.kind == "tools" else None
        try:
            async with self._client_turn(msg.client):
                if msg.rid in self._cancelled_while_encoding:
                    ids: list[int] = []
                    trimmed = 0  # cancelled while waiting its turn: no work at all
                else:
                    ids, trimmed = await asyncio.get_running_loop().run_in_executor(
                        self._pool, self._encode_blocking, msg.messages, msg.prompt, reserve, tools
                    )
        except PromptTooLong as exc:
            too_long = self._overflow(exc.min_tokens, prompt_field(msg.prompt), "at least ")
            await self.send("reply", m.Rejected(rid=msg.rid, label=msg.label, error=too_long))
            return
        except ChatTemplateError as exc:  # the model's template refused these messages
            refused = m.Failure(code="invalid_field", message=str(exc), param="messages")
            await self.send("reply", m.Rejected(rid=msg.rid, label=msg.label, error=refused))
            return
        tokenize_ms = (time.perf_counter() - t0) * 1e3
        if msg.rid in self._cancelled_while_encoding:
            await self.send("reply", self._finished_early(msg, len(ids), tokenize_ms))
            return
        error = self._check_fits(ids, prompt_field(msg.prompt))
        compiled = await checking if checking is not None and error is None else None
        if isinstance(compiled, m.Failure):
            error = compiled
        if error is not None:
            await self.send("reply", m.Rejected(rid=msg.rid, label=msg.label, error=error))
            return
        self._streams[msg.rid] = _Stream(
            label=msg.label,
            trimmed_messages=trimmed,
            received_ns=msg.received_ns,
            cpu_ns=msg.cpu_ns,
            tokenize_ms=tokenize_ms,
            detok=IncrementalDetokenizer(self._tok, ids),
            stops=StopMatcher(msg.sampling.stop),
            calls=ToolReply(self._constraints.syntax, f"{os.getpid():x}{msg.rid:x}")
            if isinstance(compiled, Compiled) and compiled.tools
            else None,
        )
        await self.send(
            "device",
            m.Admit(
                rid=msg.rid,
                label=msg.label,
                client=msg.client,
                prompt_ids=ids,
                sampling=msg.sampling,
                eos_ids=self._eos_ids,
                more_coming=sum(1 for rid in self._encoding if rid != msg.rid and rid not in self._cancelled_while_encoding),
                grammar=compiled.grammar if isinstance(compiled, Compiled) else "",  # "" for tool_choice none
            ),
        )
        # A cancel that came in while the admit was being sent was parked as "while
        # encoding"; from here on the device owns the request, so pass it on now, in the
        # same step that stops parking them, or it is lost.
        self._encoding.pop(msg.rid, None)
        if msg.rid in self._cancelled_while_encoding:
            self._cancelled_while_encoding.discard(msg.rid)
            await self.send("device", m.CancelRequest(rid=msg.rid))

    @contextlib.asynccontextmanager
    async def _client_turn(self, client: str) -> AsyncIterator[None]:
        """One encode at a time per client, and a thread only when its turn comes."""
        lock, users = self._client_turns.get(client, (asyncio.Lock(), 0))
        self._client_turns[client] = (lock, users + 1)
        try:
            async with lock, self._threads:
                yield
        finally:
            lock, users = self._client_turns[client]
            if users <= 1:
                del self._client_turns[client]
            else:
                self._client_turns[client] = (lock, users - 1)

    def _encode_blocking(
        self, messages: list[ChatMessage] | None, prompt: str | None, reserve: int, tools: list[dict[str, Any]] | None
    ) -> tuple[list[int], int]:
        """Token ids, and how many messages were dropped to make them fit."""
        if messages is None:
            self._fitter.check_length(len(prompt or ""))
            return self._tok.encode(prompt or ""), 0  # special tokens as the model wants
        render = functools.partial(self._render_chat, tools=tools) if tools is not None else None
        fitted = self._fitter.fit_chat(messages, self._context_length - reserve, render)
        return fitted.ids, fitted.dropped_messages

    def _encode_text(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def _render_chat(self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None = None) -> str:
        knows_tools = template_knows_tools(getattr(self._tok, "chat_template", None))
        calls_as_text = None if knows_tools else self._constraints.syntax
        convo = [template_message(msg, calls_as_text) for msg in messages]
        if tools is not None and not knows_tools:
            convo.insert(0, {"role": "system", "content": tools_preamble(tools, self._constraints.syntax)})
        if self._has_template:
            extra = {"tools": tools} if tools is not None else {}
            return self._tok.render_chat(convo, add_generation_prompt=True, **extra)
        return "".join(f"{c['role']}: {c['content']}\n" for c in convo) + "assistant:"

    def _check_fits(self, ids: list[int], param: str) -> m.Failure | None:
        """Why the prompt, held in the generate's field `param`, cannot run; None when it can."""
        if not ids:
            return m.Failure(code="invalid_field", message="the prompt encodes to zero tokens", param=param)
        if len(ids) >= self._context_length:
            return self._overflow(len(ids), param)
        return None

    def _overflow(self, tokens: int, param: str, qualifier: str = "") -> m.Failure:
        return m.Failure(
            code="context_overflow",
            message=(
                f"the prompt is {qualifier}{tokens} tokens (after dropping every older turn that could go) "
                f"but the model's context is {self._context_length} tokens, including the reply"
            ),
            param=param,
        )

    def _finished_early(self, msg: m.Encode, prompt_tokens: int, tokenize_ms: float) -> m.Finished:
        return m.Finished(
            rid=msg.rid,
            trimmed_messages=0,
            label=msg.label,
            reason="cancelled",
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            cached_tokens=0,
            tokenize_ms=tokenize_ms,
            received_ns=msg.received_ns,
            cpu_ns=msg.cpu_ns,
            timings=m.DeviceTimings(),
        )

    async def _token(self, msg: m.TokenOut) -> None:
        stream = self._streams.get(msg.rid)
        if stream is None or stream.stops.stopped:
            return  # tokens the device made before it heard about the stop string
        # Decoding one token's window takes microseconds; an executor hop would cost
        # more than the work, so this stays on the loop.
        text = ""
        for token_id in msg.token_ids:
            stream.emitted_tokens += 1
            stream.pending_ids.append(token_id)
            piece = stream.stops.feed(stream.detok.push(token_id))
            text += piece if stream.calls is None else stream.calls.feed(piece)
            if stream.stops.stopped:
                await self.send("device", m.StopSequence(rid=msg.rid, completion_tokens=stream.emitted_tokens))
                break  # the rest come after the stop string: never shown or counted
        # A token that adds no text and holds nothing back (one the tokenizer cannot
        # spell, say) still gets its delta, so token ids stream as they are made.
        nothing_held = not stream.detok.holding and not stream.stops.holding
        calls = stream.calls.pieces() if stream.calls is not None else []
        if text or calls or stream.stops.stopped or nothing_held:
            await self._emit(msg.rid, stream, text, calls)

    async def _emit(self, rid: int, stream: _Stream, text: str, calls: list[ToolCallPiece]) -> None:
        ids, stream.pending_ids = stream.pending_ids, []
        if text or ids or calls:
            await self.send("reply", m.TextOut(rid=rid, text=text, token_ids=ids, tool_calls=calls))

    async def _ended(self, msg: m.Ended) -> None:
        stream = self._streams.pop(msg.rid, None)
        if stream is None:
            return
        if not stream.stops.stopped:
            tail = stream.stops.feed(stream.detok.flush())  # a stop string may complete here
            tail += stream.stops.flush()
            if stream.calls is not None:
                tail = stream.calls.feed(tail) + stream.calls.flush()
            calls = stream.calls.pieces() if stream.calls is not None else []
            if tail or stream.pending_ids or calls:
                await self._emit(msg.rid, stream, tail, calls)
        # The device ends a turn where a reported stop string says, but it may have ended
        # first (its end-of-turn token or length limit came in the same run of tokens,
        # or the stop string completed in the last bytes): the same rule settles it here.
        stop_at = stream.emitted_tokens if stream.stops.stopped else None
        turn = end_of_turn(max(msg.completion_tokens, stream.emitted_tokens), stop_at=stop_at)
        reason = turn.reason or msg.reason
        completion = turn.completion_tokens if turn.reason else msg.completion_tokens
        await self.send(
            "reply",
            m.Finished(
                rid=msg.rid,
                trimmed_messages=stream.trimmed_messages,
                label=stream.label,
                reason=reason,
                prompt_tokens=msg.prompt_tokens,
                completion_tokens=completion,
                cached_tokens=msg.cached_tokens,
                tokenize_ms=stream.tokenize_ms,
                received_ns=stream.received_ns,
                cpu_ns=stream.cpu_ns,
                timings=msg.timings,
                error=msg.error,
                device="" if msg.device == "device" else msg.device,
                tool_calls=stream.calls.calls if stream.calls is not None else [],
            ),
        )

    async def on_close(self) -> None:
        for task in list(self._encoding.values()):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._constraints.close()


# Added tokens that end an assistant turn in chat templates whose `eos_token` is another
# token: Phi-3's `<|end|>` (the Voyager SDK stops on it), Llama 3's `<|eot_id|>`.
END_OF_TURN_MARKERS = ("<|end|>", "<|eot_id|>")


class TextTokenizer(Protocol):
    """What the daemon asks of a model's tokenizer (tokenizer_json.JsonTokenizer for a
    Hugging Face directory, llamacpp.vocab.LlamaTokenizer for a GGUF file and for a
    directory converted to one that libllama tokenizes alike)."""

    chat_template: str | None
    eos_token_id: int | None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...
    def token_id(self, token: str | None) -> int | None: ...
    def added_tokens(self) -> dict[int, str]: ...
    def token_texts(self) -> Iterator[str]: ...
    def get_vocab(self) -> dict[str, int]: ...
    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any) -> str: ...


def end_of_turn_ids(tokenizer: TextTokenizer) -> set[int]:
    """The tokenizer's eos and any end-of-turn marker it knows: a reply stops on each."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    ids.update(token_id for token_id, text in tokenizer.added_tokens().items() if text in END_OF_TURN_MARKERS)
    return ids


def load_tokenizer(model: str, vocab_gguf: str | None = None) -> TextTokenizer:
    """The model's own tokenizer (no transformers), or a one-line ModelLoadError; with
    `vocab_gguf` (BackendInfo.vocab_gguf), on that file's libllama vocabulary."""
    from axchat.actors.backends.base import ModelLoadError
    from axchat.actors.chat_template import ChatTemplateError
    from axchat.actors.tokenizer_files import TokenizerFilesError
    from axchat.models import ollama_store

    path = Path(model).expanduser()
    try:
        # The vocabulary and template in a GGUF file's metadata (Ollama's blobs have no suffix).
        gguf_only = model.endswith(".gguf") or ollama_store.is_blob(path)
        if gguf_only or vocab_gguf is not None:
            from axchat.actors.backends.llamacpp.engine import EngineError
            from axchat.actors.backends.llamacpp.vocab import LlamaTokenizer

            try:
                return LlamaTokenizer(path) if gguf_only else LlamaTokenizer(Path(vocab_gguf or ""), path)
            except EngineError as exc:
                raise ModelLoadError(str(exc)) from None
        if not path.is_dir():
            raise ModelLoadError(f"cannot load a tokenizer from {model}: not a local directory (axchat pull it first)")
        from axchat.actors.tokenizer_json import JsonTokenizer

        return JsonTokenizer.from_dir(path)
    except (OSError, TokenizerFilesError, ChatTemplateError) as exc:
        raise ModelLoadError.because(f"cannot load a tokenizer from {model}", exc) from None
