"""The FastAPI app: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (stream and non-stream;
n choices, logprobs, echoed prompts with their logprobs, tool calls; bodies are built in api/replies.py).

Each request's generation runs in its own thread that feeds an asyncio queue; the engine's lock makes
concurrent requests wait their turn, so outputs never interleave. A client that disconnects mid-stream sets a
cancel event: the generation stops at its next token and the next request proceeds.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.api import replies
from tunelab.api.replies import Reply
from tunelab.api.schemas import ChatCompletionRequest, CompletionRequest
from tunelab.core.generation import Delta, EngineCrashed, InferenceError, ModelNotFound

log = logging.getLogger(__name__)
_END = object()
_FIELD = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)?): ")


def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def create_app(engine: Any, api_key: str | None = None, default_max_tokens: int = 512, allow_file_urls: bool = True) -> FastAPI:
    """The API for a loaded ``engine`` (tunelab.engine.inference.base.Engine); ``api_key`` guards /v1;
    ``allow_file_urls``: whether image parts may be file: URLs (files of this machine)."""
    app = FastAPI(title="tunelab API", version="1", docs_url=None, redoc_url=None)
    app.state.engine = engine
    _install_errors(app)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable) -> Any:
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        data = [{"id": m.id, "object": "model", "created": created, "owned_by": "tunelab", "root": m.id, "parent": m.parent}
                for m in engine.models()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> Any:
        params = body.sampling(default_max_tokens)
        messages, tools = body.plain_messages(allow_file_urls), body.tool_list()
        parser = (await asyncio.to_thread(engine.tool_parser, body.model)) if tools else None
        parser = parser if body.parse_tools else None
        logprobs = params.logprobs is not None
        cancels = [threading.Event() for _ in range(body.n)]
        streams = [await _start(lambda i=i: engine.chat(body.model, messages, body.choice_params(params, i), cancels[i], tools))
                   for i in range(body.n)]
        reply = Reply("chatcmpl", "chat.completion", body.model)
        if body.stream:
            parts = [replies.chat_chunks(reply, i, _drain(s, cancels[i]), logprobs, parser) for i, s in enumerate(streams)]
            return _sse(_with_usage(reply, "chat.completion.chunk", parts, [i == 0 for i in range(body.n)], body.include_usage))
        got = [await replies.collect(_drain(s, c)) for s, c in zip(streams, cancels)]
        choices = [replies.chat_choice(i, g, logprobs, parser) for i, g in enumerate(got)]
        return reply.body(choices, got[0].last.prompt_tokens, sum(g.last.completion_tokens for g in got))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        max_tokens = body.max_tokens_asked(default_max_tokens)
        if max_tokens == 0 and not body.echo:
            raise InferenceError("max_tokens: 0 generates nothing; it needs echo: true (score the prompt only)")
        params = body.sampling(default_max_tokens)
        logprobs = params.logprobs is not None
        reply = Reply("cmpl", "text_completion", body.model)
        plan = []  # per choice: (index, echo, stream or None, cancel event, prompt tokens of an echo-only choice)
        for p, prompt in enumerate(body.prompts()):
            echo, prompt_tokens = None, 0
            if body.echo:
                echo, prompt_tokens = await asyncio.to_thread(_echo, engine, body, prompt, params.logprobs, max_tokens == 0)
            for i in range(body.n):
                cancel = threading.Event()
                stream = None if max_tokens == 0 else await _start(
                    lambda prompt=prompt, i=i, cancel=cancel: engine.complete(
                        body.model, prompt, body.choice_params(params, i), cancel, body.add_special_tokens))
                plan.append((p * body.n + i, echo, stream, cancel, prompt_tokens))
        firsts = [index % body.n == 0 for index, *_ in plan]  # a prompt's tokens count once, not once per choice
        if body.stream:
            parts = [_echo_only(reply, index, echo, logprobs, tokens) if stream is None else
                     replies.text_chunks(reply, index, _drain(stream, cancel), echo, logprobs)
                     for index, echo, stream, cancel, tokens in plan]
            return _sse(_with_usage(reply, "text_completion", parts, firsts, body.include_usage))
        choices, prompt_total, completion_total = [], 0, 0
        for (index, echo, stream, cancel, tokens), first in zip(plan, firsts):
            got = (await replies.collect(_drain(stream, cancel)) if stream else
                   replies.Collected(last=Delta(finish_reason="length", prompt_tokens=tokens)))
            choices.append(replies.text_choice(index, got, echo, logprobs))
            prompt_total += got.last.prompt_tokens if first else 0
            completion_total += got.last.completion_tokens
        return reply.body(choices, prompt_total, completion_total)

    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}", param=where)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500 else "server_error")

    @app.exception_handler(InferenceError)
    async def _bad(request: Request, exc: InferenceError) -> JSONResponse:
        if isinstance(exc, ModelNotFound):
            return error_response(404, str(exc), code="model_not_found", param="model")
        field = _FIELD.match(str(exc))
        return error_response(400, str(exc), param=field.group(1) if field else None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        status = 503 if isinstance(exc, EngineCrashed) else 500
        return error_response(status, f"{type(exc).__name__}: {exc}", "server_error")


async def _start(open_stream: Callable[[], Iterator[Delta]]) -> Iterator[Delta]:
    """Validate and open a stream off the event loop (errors here become 4xx before any byte is sent)."""
    return await asyncio.to_thread(open_stream)


async def _drain(stream: Iterator[Delta], cancel: threading.Event) -> AsyncIterator[Delta]:
    """Iterate ``stream`` in its own thread; on early exit (client gone) cancel it and let it finish there."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def produce() -> None:
        try:
            for delta in stream:
                loop.call_soon_threadsafe(queue.put_nowait, delta)
                if cancel.is_set():
                    break
        except BaseException as exc:  # handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()
            try:
                loop.call_soon_threadsafe(queue.put_nowait, _END)
            except RuntimeError:  # the loop is gone (server shutting down)
                pass

    threading.Thread(target=produce, name="tunelab-request", daemon=True).start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()


def _echo(engine: Any, body: CompletionRequest, prompt: str | list[int], top: int | None, count: bool) -> tuple[tuple[str, list], int]:
    """The echoed prompt: its text and (with logprobs) its tokens' logprobs; and its token count when ``count``."""
    entries = engine.prompt_logprobs(body.model, prompt, top or 0, body.add_special_tokens) if top is not None or count else []
    if isinstance(prompt, str):
        text = prompt
    else:
        try:
            text = engine.decode(body.model, prompt)
        except InferenceError:
            if not entries:
                raise
            text = "".join(e.token for e in entries)  # an engine without a local tokenizer: the server's own tokens
    return (text, entries if top is not None else []), len(entries)


async def _echo_only(reply: Reply, index: int, echo: Any, logprobs: bool, prompt_tokens: int) -> AsyncIterator[tuple[dict, Delta | None]]:
    """The stream of a choice that only echoes its prompt (max_tokens 0)."""
    lp = replies.text_logprobs(echo[1]) if logprobs else None
    yield {**reply.base(), "choices": [{"index": index, "text": echo[0], "logprobs": lp, "finish_reason": "length"}]}, \
        Delta(finish_reason="length", prompt_tokens=prompt_tokens)


async def _with_usage(reply: Reply, kind: str, parts: list[AsyncIterator[tuple[dict, Delta | None]]], firsts: list[bool],
                      include_usage: bool) -> AsyncIterator[dict]:
    """The choices' chunks one choice after another, then (if asked) one usage chunk for them all (a prompt's
    tokens counted at its first choice)."""
    prompt_tokens = completion_tokens = 0
    for part, first in zip(parts, firsts):
        async for chunk, last in part:
            yield chunk
            if last is not None:
                if first:
                    prompt_tokens += last.prompt_tokens
                completion_tokens += last.completion_tokens
    if include_usage:
        yield {**reply.base(kind), "choices": [], "usage": replies.usage(prompt_tokens, completion_tokens)}


def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    """Server-sent events: one `data:` line per chunk, then `data: [DONE]`; a failure mid-stream is sent as an error event."""

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except Exception as exc:  # headers are sent already: report in-band, as OpenAI and vLLM do
            log.exception("stream failed")
            yield f"data: {json.dumps({'error': {'message': f'{type(exc).__name__}: {exc}', 'type': 'server_error'}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
