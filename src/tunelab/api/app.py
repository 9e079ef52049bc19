"""The FastAPI app: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (stream and non-stream).

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
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.api.schemas import ChatCompletionRequest, CompletionRequest
from tunelab.core.generation import Delta, EngineCrashed, InferenceError, ModelNotFound

log = logging.getLogger(__name__)
_END = object()
_FIELD = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)?): ")


def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def create_app(engine: Any, api_key: str | None = None, default_max_tokens: int = 512) -> FastAPI:
    """The API for a loaded ``engine`` (tunelab.engine.inference.base.Engine); ``api_key`` guards /v1."""
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
        messages = body.plain_messages()
        cancel = threading.Event()
        stream = await _start(lambda: engine.chat(body.model, messages, params, cancel))
        reply = _Reply("chatcmpl", "chat.completion", body.model)
        if body.stream:
            return _sse(reply.chat_chunks(_drain(stream, cancel), body.include_usage))
        return await reply.chat_body(_drain(stream, cancel))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        params = body.sampling(default_max_tokens)
        prompt = body.single_prompt()
        cancel = threading.Event()
        stream = await _start(lambda: engine.complete(body.model, prompt, params, cancel, body.add_special_tokens))
        reply = _Reply("cmpl", "text_completion", body.model)
        if body.stream:
            return _sse(reply.text_chunks(_drain(stream, cancel), body.include_usage))
        return await reply.text_body(_drain(stream, cancel))

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


class _Reply:
    """Builds OpenAI response bodies and stream chunks for one request."""

    def __init__(self, prefix: str, kind: str, model: str):
        self.id, self.kind, self.model, self.created = f"{prefix}-{uuid.uuid4().hex[:24]}", kind, model, int(time.time())

    def _base(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def _usage(last: Delta) -> dict:
        return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                "total_tokens": last.prompt_tokens + last.completion_tokens}

    @staticmethod
    async def _collect(deltas: AsyncIterator[Delta]) -> tuple[str, Delta]:
        text, last = [], Delta(finish_reason="stop")
        async for delta in deltas:
            text.append(delta.text)
            if delta.finish_reason:
                last = delta
        return "".join(text), last

    async def chat_body(self, deltas: AsyncIterator[Delta]) -> dict:
        text, last = await self._collect(deltas)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": _finish(last)}
        return {**self._base(self.kind), "choices": [choice], "usage": self._usage(last)}

    async def text_body(self, deltas: AsyncIterator[Delta]) -> dict:
        text, last = await self._collect(deltas)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": _finish(last)}
        return {**self._base(self.kind), "choices": [choice], "usage": self._usage(last)}

    async def chat_chunks(self, deltas: AsyncIterator[Delta], include_usage: bool) -> AsyncIterator[dict]:
        kind = "chat.completion.chunk"
        yield {**self._base(kind), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        async for delta in deltas:
            if delta.text:
                yield {**self._base(kind), "choices": [{"index": 0, "delta": {"content": delta.text}, "finish_reason": None}]}
            if delta.finish_reason:
                yield {**self._base(kind), "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(delta)}]}
                if include_usage:
                    yield {**self._base(kind), "choices": [], "usage": self._usage(delta)}

    async def text_chunks(self, deltas: AsyncIterator[Delta], include_usage: bool) -> AsyncIterator[dict]:
        async for delta in deltas:
            if delta.text:
                yield {**self._base(self.kind), "choices": [{"index": 0, "text": delta.text, "logprobs": None, "finish_reason": None}]}
            if delta.finish_reason:
                yield {**self._base(self.kind), "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": _finish(delta)}]}
                if include_usage:
                    yield {**self._base(self.kind), "choices": [], "usage": self._usage(delta)}


def _finish(delta: Delta) -> str:
    return delta.finish_reason if delta.finish_reason in ("stop", "length") else "stop"


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
