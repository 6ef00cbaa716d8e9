"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web

from axchat.frontends.web import openai_mapping as mapping
from axchat.frontends.web.appkeys import LINK, METRICS, USER_TRUST
from axchat.frontends.web.end_user import end_user
from axchat.frontends.web.generation import Generation
from axchat.frontends.web.openai_errors import ApiError, from_daemon
from axchat.frontends.web.openai_schema import ChatCompletionRequest, CompletionRequest, decode_body
from axchat.frontends.web.request_body import read_body
from axchat.frontends.web.sse import SseStream
from axchat.protocol import v1

routes = web.RouteTableDef()


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = decode_body(await read_body(request), ChatCompletionRequest)
    generate = mapping.chat_to_generate(body)
    generate.user = end_user(request, body.user, request.app[USER_TRUST])
    return await _respond(request, "chat", generate, body.stream, mapping.include_usage(body))


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    body = decode_body(await read_body(request), CompletionRequest)
    generate = mapping.completion_to_generate(body)
    generate.user = end_user(request, body.user, request.app[USER_TRUST])
    return await _respond(request, "text", generate, body.stream, mapping.include_usage(body))


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    welcome = await request.app[LINK].welcome()
    return web.json_response({"object": "list", "data": [_model_card(welcome)]})


@routes.get("/v1/models/{model:.+}")
async def model(request: web.Request) -> web.Response:
    welcome = await request.app[LINK].welcome()
    if request.match_info["model"] != welcome.model:
        raise from_daemon("unknown_model", f"model {request.match_info['model']!r} is not served here")
    return web.json_response(_model_card(welcome))


def _model_card(welcome: v1.Welcome) -> dict[str, Any]:
    return {"id": welcome.model, "object": "model", "created": 0, "owned_by": "axchat"}


async def _respond(
    request: web.Request, kind: Literal["chat", "text"], generate: v1.Generate, stream: bool, with_usage: bool
) -> web.StreamResponse:
    link = request.app[LINK]
    endpoint = "chat.completions" if kind == "chat" else "completions"
    # The hello proves the daemon is there and names the model for the response.
    welcome = await link.welcome()
    shape = mapping.ResponseShape(kind, generate.model or welcome.model)
    async with Generation(link, generate, request.app[METRICS], endpoint) as run:
        if stream:
            return await _stream(request, run, shape, with_usage)
        text = "".join([piece async for piece in run.pieces() if isinstance(piece, str)])
        done = _checked(run)
        return web.json_response(shape.whole(text, mapping.finish_reason(done), done.usage, done.tool_calls))


async def _stream(
    request: web.Request, run: Generation, shape: mapping.ResponseShape, with_usage: bool
) -> web.StreamResponse:
    sse = SseStream()
    await sse.open(request)
    first = shape.first_chunk(with_usage)
    if first is not None:
        await sse.send(first)
    try:
        async for piece in run.pieces():
            if isinstance(piece, str):
                await sse.send_json(shape.text_chunk_json(piece, with_usage))
            else:
                await sse.send(shape.tool_calls_chunk(piece, with_usage))
        done = _checked(run)
    except ApiError as exc:
        # The 200 is already sent: OpenAI-style servers put the error in the stream.
        await sse.send(exc.body())
    else:
        await sse.send(shape.finish_chunk(mapping.finish_reason(done), with_usage))
        if with_usage:
            await sse.send(shape.usage_chunk(done.usage))
    await sse.close()
    return sse.response


def _checked(run: Generation) -> v1.Done:
    done = run.done
    assert done is not None
    if done.finish_reason == "error":
        raise _failure(done)
    return done


def _failure(done: v1.Done) -> ApiError:
    error = done.error or v1.ErrorInfo(code="internal", message="the daemon failed without saying why")
    return from_daemon(error.code, error.message)
