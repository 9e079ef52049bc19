"""OpenAI response bodies and stream chunks: choices (n per prompt), logprobs in the chat and the completions
shapes, echoed prompts, and tool calls read back from the reply text."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tunelab.core.generation import Delta, TokenLogprob
from tunelab.core.tool_calls import ToolStreamSplitter, split_tool_calls


@dataclass
class Collected:
    """One choice's whole output."""

    text: str = ""
    last: Delta = field(default_factory=lambda: Delta(finish_reason="stop"))
    entries: list[TokenLogprob] = field(default_factory=list)


async def collect(deltas: AsyncIterator[Delta]) -> Collected:
    """Join a stream of deltas."""
    out, texts = Collected(), []
    async for delta in deltas:
        texts.append(delta.text)
        out.entries.extend(delta.logprobs or [])
        if delta.finish_reason:
            out.last = delta
    out.text = "".join(texts)
    return out


def finish_reason(delta: Delta) -> str:
    """Our finish reason as OpenAI's (a cancelled generation reports 'stop')."""
    return delta.finish_reason if delta.finish_reason in ("stop", "length", "tool_calls") else "stop"


def chat_logprobs(entries: list[TokenLogprob] | None) -> dict[str, Any]:
    """The chat shape: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def one(token: str, logprob: float | None) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, v) for t, v in e.top]} for e in entries or []]}


def text_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The completions shape: parallel lists of tokens, their logprobs, top alternatives and text offsets."""
    tops: list[dict[str, float] | None] = []
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
        if entry.logprob is None:
            tops.append(None)
        else:
            top = dict(entry.top)
            top.setdefault(entry.token, entry.logprob)
            tops.append(top)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops, "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Reply:
    """Ids and envelopes for one request's body or chunks."""

    def __init__(self, prefix: str, kind: str, model: str):
        self.id, self.kind, self.model, self.created = f"{prefix}-{uuid.uuid4().hex[:24]}", kind, model, int(time.time())

    def base(self, kind: str | None = None) -> dict[str, Any]:
        """The fields every body and chunk carries."""
        return {"id": self.id, "object": kind or self.kind, "created": self.created, "model": self.model}

    def body(self, choices: list[dict], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """A non-streamed body."""
        return {**self.base(), "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def chat_choice(index: int, got: Collected, logprobs: bool, tool_parser: str | None) -> dict[str, Any]:
    """One chat choice; with a tool parser, calls in the text become ``message.tool_calls``."""
    content, calls = split_tool_calls(tool_parser, got.text) if tool_parser else (got.text, [])
    message: dict[str, Any] = {"role": "assistant", "content": content}
    reason = finish_reason(got.last)
    if calls:
        message["tool_calls"] = [call.to_openai() for call in calls]
        reason = "tool_calls"
    return {"index": index, "message": message, "logprobs": chat_logprobs(got.entries) if logprobs else None,
            "finish_reason": reason}


async def chat_chunks(reply: Reply, index: int, deltas: AsyncIterator[Delta], logprobs: bool,
                      tool_parser: str | None) -> AsyncIterator[tuple[dict, Delta | None]]:
    """One choice's stream chunks (each with the final Delta once it is known, for usage)."""
    kind = "chat.completion.chunk"

    def chunk(delta: dict, reason: str | None = None, entries: list[TokenLogprob] | None = None) -> dict:
        lp = chat_logprobs(entries) if logprobs and entries else None
        return {**reply.base(kind), "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}]}

    splitter = ToolStreamSplitter(tool_parser) if tool_parser else None
    yield chunk({"role": "assistant", "content": ""}), None
    async for delta in deltas:
        text = splitter.feed(delta.text) if splitter else delta.text
        if text or (logprobs and delta.logprobs):
            yield chunk({"content": text}, entries=delta.logprobs), None
        if delta.finish_reason:
            reason = finish_reason(delta)
            if splitter:
                rest, calls = splitter.finish()
                if rest:
                    yield chunk({"content": rest}), None
                if calls:
                    yield chunk({"tool_calls": [c.to_openai(i) for i, c in enumerate(calls)]}), None
                    reason = "tool_calls"
            yield chunk({}, reason), delta


def text_choice(index: int, got: Collected, echo: tuple[str, list[TokenLogprob]] | None, logprobs: bool) -> dict[str, Any]:
    """One completions choice (prompt text and prompt logprobs first when echoed)."""
    prefix, prompt_entries = echo or ("", [])
    lp = text_logprobs(prompt_entries + got.entries) if logprobs else None
    return {"index": index, "text": prefix + got.text, "logprobs": lp, "finish_reason": finish_reason(got.last)}


async def text_chunks(reply: Reply, index: int, deltas: AsyncIterator[Delta], echo: tuple[str, list[TokenLogprob]] | None,
                      logprobs: bool) -> AsyncIterator[tuple[dict, Delta | None]]:
    """One completions choice's stream chunks."""
    def chunk(text: str, entries: list[TokenLogprob] | None, reason: str | None = None) -> dict:
        lp = text_logprobs(entries or []) if logprobs else None
        return {**reply.base(), "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": reason}]}

    if echo:
        yield chunk(echo[0], echo[1]), None
    async for delta in deltas:
        if delta.text or (logprobs and delta.logprobs):
            yield chunk(delta.text, delta.logprobs), None
        if delta.finish_reason:
            yield chunk("", None, finish_reason(delta)), delta
