"""Render chat templates the way transformers' apply_chat_template does, and find the trained spans.

The Jinja environment mirrors the one Hugging Face tokenizers use (sandboxed, trim_blocks, lstrip_blocks,
loop controls, a non-escaping ``tojson``, ``raise_exception`` and ``strftime_now``), so a template renders the
same string here and in any serving stack. ``{% generation %}...{% endgeneration %}`` marks the text that
carries loss; when spans are requested the block is wrapped in private-use sentinels that are removed again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The date templates see when they insert "today". Official Llama 3.1 templates fall back to 26 Jul 2024;
# tunelab uses the same fixed date by default so that renders (and tokenized caches) are reproducible.
REFERENCE_DATE = _dt.date(2024, 7, 26)

_OPEN, _CLOSE = "\ue000", "\ue001"  # sentinels around generation blocks while tracking spans


class TemplateRefusal(ValueError):
    """The template refuses these messages (as the official one would), e.g. an unsupported system role."""


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation and the character spans of its loss-carrying (assistant) parts."""

    text: str
    spans: tuple[tuple[int, int], ...]


class _GenerationTag(jinja2.ext.Extension):
    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_mark", [nodes.Name("_track_spans", "load")]), [], [], body).set_lineno(
            lineno
        )

    def _mark(self, track: Any, caller: Any) -> str:
        body = caller()
        return f"{_OPEN}{body}{_CLOSE}" if track is True else body


_GENERATION_TAG = re.compile(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}")


def serving_source(source: str) -> str:
    """``source`` without the training-only ``{% generation %}`` tags, for any Jinja (plain jinja2, vLLM,
    llama.cpp, Ollama importers): each tag becomes an always-true ``if`` with the same whitespace control, so
    the rendered string is byte-identical."""
    return _GENERATION_TAG.sub(lambda m: "{%" + m.group(1) + (" endif " if m.group(2) else " if true ") + m.group(3) + "%}", source)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


@lru_cache(maxsize=512)
def compile_template(source: str) -> jinja2.Template:
    """Compile (and cache) a chat-template source string."""
    return _environment().from_string(source)


def template_date() -> _dt.date:
    """The date templates insert: $TUNELAB_TEMPLATE_DATE (YYYY-MM-DD or 'today'), else REFERENCE_DATE."""
    value = os.environ.get("TUNELAB_TEMPLATE_DATE", "").strip()
    if not value:
        return REFERENCE_DATE
    if value == "today":
        return _dt.date.today()
    return _dt.date.fromisoformat(value)


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def alias_reasoning(messages: list[dict]) -> list[dict]:
    """Give each message's reasoning under every common name, as transformers does before rendering."""
    out = []
    for message in messages:
        if isinstance(message, dict):
            reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_source(
    source: str,
    messages: list[dict],
    add_generation_prompt: bool = False,
    *,
    track_spans: bool = False,
    date: _dt.date | None = None,
    **kwargs: Any,
) -> Rendered:
    """Render ``messages`` through a chat-template source; raise TemplateRefusal if the template refuses."""
    day = date or template_date()
    context = {
        "tools": None,
        "documents": None,
        **kwargs,
        "messages": alias_reasoning(messages),
        "add_generation_prompt": add_generation_prompt,
        "strftime_now": lambda fmt: _dt.datetime.combine(day, _dt.time()).strftime(fmt),
        "_track_spans": track_spans,
    }
    try:
        text = compile_template(source).render(**context)
    except jinja2.exceptions.TemplateSyntaxError:
        raise
    except jinja2.exceptions.TemplateError as exc:  # raise_exception(...) and undefined variables
        raise TemplateRefusal(_one_line(exc)) from exc
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        raise TemplateRefusal(f"{type(exc).__name__}: {_one_line(exc)}") from exc
    return _split_spans(text) if track_spans else Rendered(text, ())


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _split_spans(marked: str) -> Rendered:
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    opened: list[int] = []
    length = 0
    for piece in re.split(f"([{_OPEN}{_CLOSE}])", marked):
        if piece == _OPEN:
            opened.append(length)
        elif piece == _CLOSE:
            begin = opened.pop()
            if length > begin:
                spans.append((begin, length))
        else:
            out.append(piece)
            length += len(piece)
    return Rendered("".join(out), tuple(sorted(spans)))
