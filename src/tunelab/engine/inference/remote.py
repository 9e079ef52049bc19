"""The ``openai`` engine: any OpenAI-compatible server by base URL (vllm serve, SGLang, llama.cpp server,
Ollama, tunelab api), through the official ``openai`` client.

Given a ModelSpec (a server tunelab started itself), chat prompts are rendered with the registry templates and
sent to /v1/completions, so what is served is what was trained; otherwise /v1/chat/completions is used and
the server applies its own template.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tunelab.core.generation import Delta, EngineCrashed, InferenceError, ModelNotFound, SamplingParams, TokenLogprob, TokenStream
from tunelab.core.media import has_images, image_chat_template, inline_images
from tunelab.core.serving import ModelSpec
from tunelab.engine.inference.base import Engine, ServedModel, TemplateBook, check_messages

log = logging.getLogger(__name__)


class OpenAIEngine(Engine):
    """A client of an OpenAI-compatible server."""

    name = "openai"

    def __init__(
        self, base_url: str, api_key: str | None = None, spec: ModelSpec | None = None,
        on_close: Callable[[], None] | None = None, vllm: bool = False, timeout: float = 600.0,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        import openai

        self.base_url = base_url.rstrip("/")
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", timeout=timeout, max_retries=0)
        self.templates = TemplateBook(spec) if spec else None
        self.spec, self._on_close, self._vllm = spec, on_close, vllm
        self._models: list[ServedModel] | None = None
        self._trust_remote_code = trust_remote_code
        self._image_text: tuple[str | None] | None = None  # (the spec model's image text,), read once

    @classmethod
    def connect(cls, base_url: str, api_key: str | None = None) -> "OpenAIEngine":
        """Connect and check the server answers /v1/models."""
        engine = cls(base_url, api_key)
        engine.models()
        return engine

    def models(self) -> list[ServedModel]:
        """The server's models (base models first; adapters carry their parent, as vLLM and tunelab report)."""
        if self._models is None:
            with _translated(self.base_url):
                listed = list(self.client.models.list())
            models = [ServedModel(m.id, (m.model_extra or {}).get("parent") or getattr(m, "parent", None)) for m in listed]
            self._models = sorted(models, key=lambda m: m.parent is not None)
        return self._models

    def chat(
        self, model: str, messages: list[dict], params: SamplingParams, cancel: threading.Event | None = None,
        tools: list[dict] | None = None,
    ) -> Iterator[Delta]:
        """Stream a chat reply (rendered locally when tunelab knows the model's templates)."""
        check_messages(messages)
        if has_images(messages):
            return self._chat_with_images(model, messages, params, cancel, tools)
        if self.templates is not None:
            self.check_model(model)
            prompt = self.templates.render(model, messages, tools)
            stops = [*self.templates.stops(model), *params.stop]
            return self._stream_completion(model, prompt, params, stops, cancel, add_special_tokens=False)
        if tools:
            self.tool_parser(model)
        request = dict(model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **_sampling(params))
        if params.logprobs is not None:
            request.update(logprobs=True, top_logprobs=params.logprobs)
        return self._stream(lambda: self.client.chat.completions.create(**request), params.stop, cancel, chat=True)

    def _chat_with_images(self, model: str, messages: list[dict], params: SamplingParams, cancel: threading.Event | None,
                          tools: list[dict] | None) -> Iterator[Delta]:
        """Images go through /v1/chat/completions as data URLs (a completions prompt cannot carry them)."""
        try:
            inlined = inline_images(messages)
        except ValueError as exc:
            raise InferenceError(f"messages: {exc}") from None
        request: dict[str, Any] = dict(model=model, messages=inlined, stream=True, stream_options={"include_usage": True},
                                       **_sampling(params))
        stops = list(params.stop)
        if self.templates is not None:  # vllm serve started by tunelab: it renders with the template the model was trained with
            self.check_model(model)
            if tools:
                raise InferenceError("tools: not with images on this engine; send the image without tools")
            image_text = self._served_image_text()
            if image_text is None:
                raise InferenceError(f"messages: {model!r} is a text-only model and takes no images")
            template = self.templates.choice(model).template.serving_jinja
            request.setdefault("extra_body", {})["chat_template"] = image_chat_template(template, image_text)
            stops += self.templates.stops(model)
            request["stop"] = [s for s in dict.fromkeys(stops) if s] or None
        elif tools:
            self.tool_parser(model)
        return self._stream(lambda: self.client.chat.completions.create(**request), stops, cancel, chat=True)

    def _served_image_text(self) -> str | None:
        """What stands for one image in a prompt of the served model (None: text-only); read from its config and
        processor once per engine."""
        if self._image_text is None:
            from tunelab.engine.inference.vllm_engine import vision_image_text

            assert self.spec is not None
            self._image_text = (vision_image_text(self.spec.path, self._trust_remote_code),)
        return self._image_text[0]

    def tool_parser(self, model: str) -> str:
        """The tool-call format of ``model``'s template (only when tunelab renders the prompts itself)."""
        if self.templates is None:
            raise InferenceError(f"tools: {self.base_url} applies its own chat template here, so tunelab cannot read its "
                                 "tool calls back; serve the model with tunelab (its template known) or call that server directly")
        self.check_model(model)
        return self.templates.tool_parser(model)

    def prompt_logprobs(self, model: str, prompt: str | list[int], top: int, add_special_tokens: bool = True) -> list[TokenLogprob]:
        """The server's echoed prompt logprobs (a one-token completion with echo; the prompt's share of it)."""
        extra: dict[str, Any] = {"extra_body": {"add_special_tokens": add_special_tokens}} if self._vllm else {}
        with _translated(self.base_url):
            response = self.client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0, echo=True,
                                                      logprobs=top, **extra)
        choice = response.choices[0]
        if choice.logprobs is None:
            raise InferenceError(f"echo: {self.base_url} returned no logprobs for an echoed prompt")
        entries = _text_entries(choice.logprobs)
        return entries[: response.usage.prompt_tokens] if response.usage else entries

    def greedy_ids(self, model: str, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """One /v1/completions request holding every tokenized prompt (vLLM batches them), token ids returned."""
        if not self._vllm:
            raise InferenceError(f"batched token-id generation needs vLLM's server; {self.base_url} is another one")
        with _translated(self.base_url):
            response = self.client.completions.create(
                model=model, prompt=prompts, max_tokens=max_new_tokens, temperature=0,
                extra_body={"return_token_ids": True, "stop_token_ids": stop_ids, "skip_special_tokens": False},
            )
        return [list((c.model_extra or {}).get("token_ids") or []) for c in sorted(response.choices, key=lambda c: c.index)]

    def complete(
        self, model: str, prompt: str | list[int], params: SamplingParams, cancel: threading.Event | None = None,
        add_special_tokens: bool = True,
    ) -> Iterator[Delta]:
        """Stream a raw completion."""
        return self._stream_completion(model, prompt, params, list(params.stop), cancel, add_special_tokens)

    def _stream_completion(self, model, prompt, params, stops, cancel, add_special_tokens) -> Iterator[Delta]:
        extra = _sampling(params)
        unique = [s for s in dict.fromkeys(stops) if s]
        extra["stop"] = (unique if self._vllm else unique[:4]) or None  # the OpenAI API itself takes at most 4
        if self._vllm:
            extra.setdefault("extra_body", {})["add_special_tokens"] = add_special_tokens
        if params.logprobs is not None:
            extra["logprobs"] = params.logprobs
        request = dict(model=model, prompt=prompt, stream=True, stream_options={"include_usage": True}, **extra)
        return self._stream(lambda: self.client.completions.create(**request), stops, cancel, chat=False)

    def _stream(self, start: Callable[[], Any], stops: list[str], cancel: threading.Event | None, chat: bool) -> Iterator[Delta]:
        with _translated(self.base_url):
            stream = start()  # errors (bad request, unknown model) surface here, before the first chunk
        return self._chunks(stream, TokenStream(stops), cancel or threading.Event(), chat)

    def _chunks(self, stream: Any, matcher: TokenStream, cancel: threading.Event, chat: bool) -> Iterator[Delta]:
        finish, usage, thinking = None, None, False
        try:
            with _translated(self.base_url):
                for chunk in stream:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        piece, thinking = _piece(choice, chat, thinking)
                        delta = matcher.feed(piece, _entries(choice, chat))
                        if delta:
                            yield delta
                        finish = choice.finish_reason or finish
                    if cancel.is_set() or matcher.stopped:
                        break
        finally:
            stream.close()
        end = matcher.finish()
        if end:
            yield end
        if thinking:
            yield Delta("</think>")
        reason = "cancelled" if cancel.is_set() else ("stop" if matcher.stopped else finish or "stop")
        yield Delta(finish_reason=reason, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                    completion_tokens=getattr(usage, "completion_tokens", 0) or 0)

    def close(self) -> None:
        """Close the client (and stop the server tunelab started, if any)."""
        self.client.close()
        if self._on_close:
            self._on_close()
            self._on_close = None


def _piece(choice: Any, chat: bool, thinking: bool) -> tuple[str, bool]:
    """A chunk's text; reasoning deltas (reasoning_content / reasoning) come wrapped in <think>...</think>."""
    if not chat:
        return choice.text or "", thinking
    delta = choice.delta
    extra = getattr(delta, "model_extra", None) or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
    text = ""
    if reasoning:
        text += ("" if thinking else "<think>") + reasoning
        thinking = True
    if delta.content:
        text += ("</think>" if thinking else "") + delta.content
        thinking = False
    return text, thinking


def _text_entries(logprobs: Any) -> list[TokenLogprob]:
    """A completions-shaped logprobs object (parallel lists) as entries, alternatives likeliest first."""
    tops = logprobs.top_logprobs or [None] * len(logprobs.tokens or [])
    return [TokenLogprob(token, value, sorted((top or {}).items(), key=lambda item: -item[1]))
            for token, value, top in zip(logprobs.tokens or [], logprobs.token_logprobs or [], tops)]


def _entries(choice: Any, chat: bool) -> list[TokenLogprob] | None:
    """A stream chunk's logprobs (chat or completions shape) as entries, or None."""
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None:
        return None
    if not chat:
        return _text_entries(logprobs)
    return [TokenLogprob(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs or []]) for e in logprobs.content or []]


def _sampling(params: SamplingParams) -> dict[str, Any]:
    """Our sampling controls as OpenAI request fields (top_k and repetition_penalty go as extras, only if set)."""
    request: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens}
    if params.seed is not None:
        request["seed"] = params.seed
    if params.stop:
        request["stop"] = params.stop[:4]
    extra = {}
    if params.top_k:
        extra["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        extra["repetition_penalty"] = params.repetition_penalty
    if extra:
        request["extra_body"] = extra
    return request


class _translated:
    """Turn openai client errors into InferenceError / ModelNotFound / EngineCrashed with the server's message."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if exc is None:
            return False
        import openai

        if isinstance(exc, openai.NotFoundError):
            raise ModelNotFound(_message(exc)) from None
        if isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
            raise InferenceError(_message(exc)) from None
        if isinstance(exc, openai.AuthenticationError):
            raise InferenceError(f"{self.base_url}: the API key was refused ({_message(exc)})") from None
        if isinstance(exc, openai.APIConnectionError):
            raise EngineCrashed(f"cannot reach {self.base_url}: {exc}") from None
        if isinstance(exc, openai.APIStatusError):
            raise EngineCrashed(f"{self.base_url} answered {exc.status_code}: {_message(exc)}") from None
        if isinstance(exc, openai.APIError):  # an error event inside a stream
            raise EngineCrashed(f"{self.base_url}: {_message(exc)}") from None
        import httpx

        if isinstance(exc, httpx.HTTPError):  # the connection broke mid-stream
            raise EngineCrashed(f"lost the connection to {self.base_url}: {type(exc).__name__}") from None
        return False


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", exc))
