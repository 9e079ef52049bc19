"""Tool calls in generated text, parsed back into the OpenAI shape (pure Python).

A template family that renders tools names its call format in its YAML (``tool_parser``); each format here
knows where calls start in the text and how to read them:

* ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Qwen2.5, Qwen3, QwQ,
  SmolLM3, Granite 4, Hermes-style fine-tunes);
* ``xml_function``: ``<tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>``
  blocks (Qwen3.5, Qwen3-Coder, Nemotron 3 Nano).

Text before the first call stays the message content; text that does not parse stays content too (the
model's words are never dropped).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the function name and its arguments as a JSON string (as OpenAI sends them)."""

    name: str
    arguments: str

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        """The call as an OpenAI ``tool_calls`` item (with ``index`` when it is a stream delta)."""
        item: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return item if index is None else {"index": index, **item}


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_XML_CALL = re.compile(r"<tool_call>\s*<function=([^>\s]+)>(.*?)</function>\s*(?:</tool_call>|$)", re.DOTALL)
_XML_PARAM = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.DOTALL)


def _hermes(text: str) -> list[ToolCall] | None:
    calls = []
    for block in _HERMES.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        arguments = call.get("arguments", call.get("parameters", {}))
        calls.append(ToolCall(call["name"], arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def _xml_value(raw: str) -> Any:
    """A parameter's value: JSON when it reads as JSON (numbers, objects, booleans), else the text itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _xml_function(text: str) -> list[ToolCall] | None:
    calls = []
    for name, body in _XML_CALL.findall(text):
        arguments = {key: _xml_value(value) for key, value in _XML_PARAM.findall(body)}
        calls.append(ToolCall(name, json.dumps(arguments, ensure_ascii=False)))
    return calls or None


@dataclass(frozen=True)
class ToolFormat:
    """A call format: the marker where calls begin and the parser of the text from there on."""

    start: str
    parse: Callable[[str], list[ToolCall] | None]


FORMATS: dict[str, ToolFormat] = {
    "hermes": ToolFormat("<tool_call>", _hermes),
    "xml_function": ToolFormat("<tool_call>", _xml_function),
}


def tool_families() -> list[str]:
    """Template families whose tool calls can be parsed back (from the registry data)."""
    from tunelab.core.templates import registry

    reg = registry()
    return [name for name in reg.names() if reg.get(name).tool_parser]


def split_tool_calls(parser: str, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content before the calls or None, calls) for a finished reply; ([text], []) when it holds no call."""
    form = FORMATS[parser]
    at = text.find(form.start)
    calls = form.parse(text[at:]) if at >= 0 else None
    if not calls:
        return text, []
    content = text[:at].strip()
    return (content or None), calls


class ToolStreamSplitter:
    """Streamed text in, content out until a call may begin; the rest is held for ``finish``."""

    def __init__(self, parser: str):
        self.parser = parser
        self.start = FORMATS[parser].start
        self.held = ""
        self.calling = False
        self.sent = ""

    def feed(self, piece: str) -> str:
        """Content safe to stream now (never part of a call marker)."""
        self.held += piece
        if self.calling:
            return ""
        at = self.held.find(self.start)
        if at >= 0:
            self.calling = True
            out, self.held = self.held[:at], self.held[at:]
        else:
            keep = next((n for n in range(min(len(self.start) - 1, len(self.held)), 0, -1)
                         if self.held.endswith(self.start[:n])), 0)
            out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep:]
        self.sent += out
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(remaining content, calls) once the reply has ended."""
        if not self.calling:
            out, self.held = self.held, ""
            return out, []
        content, calls = split_tool_calls(self.parser, self.held)
        if not calls:
            return self.held, []
        return ("" if content is None else content), calls
