"""Request bodies of the OpenAI-compatible API, and their mapping to SamplingParams.

Unknown fields are ignored (as vLLM does); fields we cannot honour (penalties other than repetition_penalty,
forced tool choices) are refused with a 400 naming the field, rather than silently dropped.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.core.generation import MAX_TOP_LOGPROBS, InferenceError, SamplingParams


class StreamOptions(BaseModel):
    """stream_options: include a final usage chunk."""

    include_usage: bool = False


MAX_CHOICES = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    def top_logprobs_wanted(self) -> int | None:
        """None when no logprobs are asked for, else how many alternatives per token."""
        return None

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        """Our SamplingParams; InferenceError names an unsupported or invalid field."""
        if not 1 <= self.n <= MAX_CHOICES:
            raise InferenceError(f"n: {self.n} is not valid; use an integer from 1 to {MAX_CHOICES}")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise InferenceError(f"{name}: not supported here; use repetition_penalty (e.g. 1.1)")
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            logprobs=self.top_logprobs_wanted(),
        )

    def choice_params(self, params: SamplingParams, index: int) -> SamplingParams:
        """The params of choice ``index`` of n: a given seed moves on by one per choice (distinct, reproducible)."""
        if index == 0 or params.seed is None:
            return params
        return SamplingParams(**{**params.to_dict(), "seed": params.seed + index})

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    """One message; content may be a string or a list of text parts."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def plain(self, index: int, allow_files: bool = True) -> dict[str, Any]:
        """The message for the engine: text content, or checked text and image_url parts when it holds images."""
        content = self.content
        if isinstance(content, list):
            kinds = [part.get("type") for part in content]
            if "image_url" in kinds:
                content = [_image_part(part, f"messages[{index}].content[{j}]", allow_files) for j, part in enumerate(content)]
            elif set(kinds) <= {"text"}:
                content = "".join(str(part.get("text", "")) for part in content)
            else:
                bad = next(k for k in kinds if k != "text")
                raise InferenceError(f"messages[{index}].content: part type {bad!r} is not one of text, image_url")
        message = {**(self.model_extra or {}), "role": self.role, "content": content if content is not None else ""}
        return message


def _image_part(part: dict[str, Any], where: str, allow_files: bool) -> dict[str, Any]:
    """A text part as is; an image_url part whose url is a data: URL (or a file: URL where allowed)."""
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind != "image_url":
        raise InferenceError(f"{where}.type: {kind!r} is not one of text, image_url")
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InferenceError(f"{where}.image_url.url: missing; give a data: URL (data:image/png;base64,...)")
    if url.startswith(("http://", "https://")):
        raise InferenceError(f"{where}.image_url.url: remote URLs are not fetched here; send the image as a data: URL")
    if url.startswith("file:") and not allow_files:
        raise InferenceError(f"{where}.image_url.url: file URLs are refused by a server reachable beyond this machine; "
                             "send the image as a data: URL (or start tunelab api with --allow-file-urls)")
    if not url.startswith(("data:", "file:")):
        raise InferenceError(f"{where}.image_url.url: {url[:40]!r} is neither a data: URL nor a file: URL")
    return {"type": "image_url", "image_url": {"url": url}}


class FunctionSpec(BaseModel):
    """A tool's function: name, description and JSON-schema parameters."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    """One entry of ``tools``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = "function"
    function: FunctionSpec


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def top_logprobs_wanted(self) -> int | None:
        """``logprobs: true`` (with ``top_logprobs`` alternatives, default 0)."""
        if self.top_logprobs is not None and not self.logprobs:
            raise InferenceError("top_logprobs: it needs logprobs: true")
        if not self.logprobs:
            return None
        top = self.top_logprobs or 0
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise InferenceError(f"top_logprobs: {top} is not valid; use an integer from 0 to {MAX_TOP_LOGPROBS}")
        return top

    def plain_messages(self, allow_files: bool = True) -> list[dict[str, Any]]:
        """Messages as plain dicts with text content or image parts (tool-call arguments as objects, as templates
        expect); ``allow_files``: whether image parts may name files on this machine (file: URLs)."""
        return [_call_arguments_as_objects(m.plain(i, allow_files)) for i, m in enumerate(self.messages)]

    def tool_list(self) -> list[dict[str, Any]] | None:
        """The tools to render (None when there are none); forced choices are refused."""
        choice = self.tool_choice
        if isinstance(choice, dict) or choice == "required":
            raise InferenceError("tool_choice: only 'auto' and 'none' are supported here (no constrained decoding)")
        if choice not in (None, "auto", "none"):
            raise InferenceError(f"tool_choice: {choice!r} is not one of auto, none, required")
        if not self.tools:
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    @property
    def parse_tools(self) -> bool:
        """Whether tool calls are read back from the reply (tools given and tool_choice not 'none')."""
        return bool(self.tools) and self.tool_choice != "none"


def _call_arguments_as_objects(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message's tool_calls with JSON-string arguments decoded (templates dump them with tojson)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    fixed = []
    for call in calls:
        function = dict(call.get("function") or {}) if isinstance(call, dict) else {}
        if isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"])
            except json.JSONDecodeError:
                pass
        fixed.append({**call, "function": function} if isinstance(call, dict) else call)
    return {**message, "tool_calls": fixed}


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    add_special_tokens: bool = True

    def top_logprobs_wanted(self) -> int | None:
        """``logprobs: k`` (k alternatives per token; 0 = the chosen token only)."""
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InferenceError(f"logprobs: {self.logprobs} is not valid; use an integer from 0 to {MAX_TOP_LOGPROBS}")
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """The prompts: one string, one list of token ids, or a list of either."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise InferenceError("prompt: it is empty")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def max_tokens_asked(self, default_max_tokens: int) -> int:
        """max_tokens as asked (0 is allowed with echo: score the prompt, generate nothing)."""
        asked = self.max_tokens if self.max_tokens is not None else self.max_completion_tokens
        return default_max_tokens if asked is None else asked
