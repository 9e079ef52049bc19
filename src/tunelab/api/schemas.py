"""Request bodies of the OpenAI-compatible API, and their mapping to SamplingParams.

Unknown fields are ignored (as vLLM does); fields we cannot honour (n > 1, logprobs, echo, penalties other than
repetition_penalty) are refused with a 400 naming the field, rather than silently dropped.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.core.generation import InferenceError, SamplingParams


class StreamOptions(BaseModel):
    """stream_options: include a final usage chunk."""

    include_usage: bool = False


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
    logprobs: Any = None

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        """Our SamplingParams; InferenceError names an unsupported or invalid field."""
        if self.n != 1:
            raise InferenceError(f"n: {self.n} choices requested; this server returns exactly 1")
        if self.logprobs not in (None, False, 0):
            raise InferenceError("logprobs: not supported by this server")
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
        )

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    """One message; content may be a string or a list of text parts."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def plain(self, index: int) -> dict[str, Any]:
        """The message as a template sees it: text content only."""
        content = self.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") != "text":
                    raise InferenceError(f"messages[{index}].content: part type {part.get('type')!r} is not supported (text only)")
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        message = {**(self.model_extra or {}), "role": self.role, "content": content if content is not None else ""}
        return message


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages as plain dicts with text content."""
        return [m.plain(i) for i, m in enumerate(self.messages)]


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: str | list[str]
    echo: bool = False
    add_special_tokens: bool = True

    def single_prompt(self) -> str:
        """The one prompt string (lists of several prompts are refused)."""
        if self.echo:
            raise InferenceError("echo: not supported by this server")
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise InferenceError(f"prompt: {len(self.prompt)} prompts given; send one prompt per request")
            return self.prompt[0]
        return self.prompt
