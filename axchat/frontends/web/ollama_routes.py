"""Ollama's API beside the OpenAI one, on the same port with the same keys, limits and
per-user fairness: `/api/chat` and `/api/generate` (NDJSON streams, or one object with
`"stream": false`), `/api/tags`, `/api/show`, `/api/ps`, `/api/version`. `HEAD /`, which
Ollama's clients send to see whether a server is up, is answered by the chat page's route."""

from __future__ import annotations

import time
from typing import Literal

import msgspec
from aiohttp import web

from axchat import __version__
from axchat.frontends.web import ollama_mapping as mapping
from axchat.frontends.web import ollama_models
from axchat.frontends.web.appkeys import LINK, METRICS, USER_TRUST
from axchat.frontends.web.end_user import end_user
from axchat.frontends.web.generation import Generation
from axchat.frontends.web.ollama_schema import ChatBody, GenerateBody, ShowBody, decode_body
from axchat.frontends.web.openai_errors import ApiError, from_error
from axchat.frontends.web.request_body import read_body
from axchat.protocol import v1

NDJSON = "application/x-ndjson"
_encoder = msgspec.json.Encoder()

routes = web.RouteTableDef()


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    return await _respond(request, "chat", decode_body(await read_body(request), ChatBody))


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    return await _respond(request, "generate", decode_body(await read_body(request), GenerateBody))


@routes.get("/api/tags")
async def tags(request: web.Request) -> web.Response:
    return web.json_response(ollama_models.tags(await request.app[LINK].status()))


@routes.post("/api/show")
async def show(request: web.Request) -> web.Response:
    body = decode_body(await read_body(request), ShowBody)
    name = body.model or body.name
    if not name:
        raise ApiError(400, "model is required")
    welcome = await request.app[LINK].welcome()
    if not mapping.is_served(name, welcome.model):
        raise mapping.not_found(name)
    return web.json_response(ollama_models.show(welcome))


@routes.get("/api/ps")
async def ps(request: web.Request) -> web.Response:
    return web.json_response(ollama_models.ps(await request.app[LINK].status()))


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


async def _respond(
    request: web.Request, kind: Literal["chat", "generate"], body: ChatBody | GenerateBody
) -> web.StreamResponse:
    started_ns = time.monotonic_ns()
    if not body.model:
        raise ApiError(400, "model is required")
    link = request.app[LINK]
    welcome = await link.welcome()
    served = mapping.is_served(body.model, welcome.model)
    if isinstance(body, ChatBody):
        generate = mapping.chat_to_generate(body, welcome.context_length)
        empty = not body.messages
    else:
        generate = mapping.generate_to_generate(body, welcome.context_length)
        empty = not body.prompt
    shape = mapping.ResponseShape(kind, body.model, started_ns)
    if empty:  # Ollama's way to load a model: it is loaded, or the daemon says why not
        if not served:
            raise mapping.not_found(body.model)
        return web.json_response(shape.loaded())
    # A name the bridge does not know may still be one of the daemon's aliases: it judges.
    generate.model = None if served else body.model
    generate.user = end_user(request, None, request.app[USER_TRUST])
    try:
        async with Generation(link, generate, request.app[METRICS], f"ollama.{kind}") as run:
            if body.stream:
                return await _stream(request, run, shape)
            text = "".join([piece async for piece in run.pieces() if isinstance(piece, str)])
            done = _finished(run)
    except ApiError as exc:
        raise mapping.in_ollama_words(exc, body.model) from None
    return web.json_response(shape.final(text, done, time.monotonic_ns()))


async def _stream(request: web.Request, run: Generation, shape: mapping.ResponseShape) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": NDJSON, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    try:
        async for piece in run.pieces():
            if isinstance(piece, str):  # Ollama gives a reply's calls whole, in its last line
                await response.write(_encoder.encode(shape.chunk(piece)) + b"\n")
        done = _finished(run)
    except ApiError as exc:
        # The 200 is already sent: Ollama puts the error in the stream as its last line.
        line = {"error": mapping.in_ollama_words(exc, shape.model).message}
    else:
        line = shape.final("", done, time.monotonic_ns())
    await response.write(_encoder.encode(line) + b"\n")
    await response.write_eof()
    return response


def _finished(run: Generation) -> v1.Done:
    done = run.done
    assert done is not None
    if done.finish_reason == "error":
        error = done.error or v1.ErrorInfo(code="internal", message="the daemon failed without saying why")
        raise from_error(v1.Error(code=error.code, message=error.message))
    return done
