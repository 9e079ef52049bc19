"""Tokenize canonical examples into input_ids and labels, with loss masks taken from the chat template.

The conversation is rendered once (the same string inference sends) and tokenized once; a token carries loss
when it overlaps a ``{% generation %}`` span of the template (assistant content plus end-of-turn). Templates
without generation markers (a model's own) get their assistant spans from prefix renders instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tunelab.core.chat_render import Rendered, TemplateRefusal
from tunelab.core.datafiles import DataError
from tunelab.core.templates import ChatTemplate, ModelEntry, registry

IGNORE = -100


@dataclass
class EncodeStats:
    """What tokenization kept, cut and dropped (reported in events and logs)."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_refused: int = 0
    dropped_no_loss: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    refusals: list[str] = field(default_factory=list)
    ignored_columns: dict[str, int] = field(default_factory=dict)  # dataset columns no format read -> rows

    def as_event(self) -> dict[str, Any]:
        """The fields of a ``data`` event."""
        return {k: v for k, v in self.__dict__.items() if k != "refusals"}


def render_with_spans(
    template: ChatTemplate, messages: list[dict], entry: ModelEntry | None = None, tools: list[dict] | None = None
) -> Rendered:
    """Render a full conversation (with its tool schemas, if any) and locate its assistant spans."""
    extra = {"tools": tools} if tools else {}
    if "generation" in template.source:
        return template.render(messages, track_spans=True, model=entry, **extra)
    return _spans_from_prefixes(template, messages, entry, extra)


def supports_tools(template: ChatTemplate) -> bool:
    """Whether a template renders tool schemas and tool calls."""
    return "tools" in template.quirks or "tool_calls" in template.source


def _spans_from_prefixes(template: ChatTemplate, messages: list[dict], entry: ModelEntry | None, extra: dict) -> Rendered:
    full = template.render(messages, model=entry, **extra).text
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = template.render(messages[:index], add_generation_prompt=True, model=entry, **extra).text
        upto = template.render(messages[: index + 1], model=entry, **extra).text
        if not (full.startswith(prompt) and full.startswith(upto) and len(upto) > len(prompt)):
            raise TemplateRefusal("cannot locate assistant turns in this template (no {% generation %} markers)")
        end = -1
        for stop in template.stop_strings:  # keep the end-of-turn, not the separator after it
            cut = upto.rfind(stop, len(prompt))
            if cut >= 0:
                end = max(end, cut + len(stop))
        spans.append((len(prompt), end if end > 0 else len(upto)))
    return Rendered(full, tuple(spans))


def labels_for(offsets: list[tuple[int, int]], spans: tuple[tuple[int, int], ...], ids: list[int]) -> list[int]:
    """Label each token that overlaps a loss span with its id, every other token with IGNORE."""
    labels = [IGNORE] * len(ids)
    span_index = 0
    for i, (start, end) in enumerate(offsets):
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        if span_index < len(spans) and end > spans[span_index][0] and start < spans[span_index][1]:
            labels[i] = ids[i]
    return labels


def encode_conversations(
    tokenizer: Any,
    template: ChatTemplate,
    conversations: list[list[dict]],
    *,
    cutoff_len: int,
    entry: ModelEntry | None = None,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    stats: EncodeStats | None = None,
    tools: list[list[dict] | None] | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenize conversations for SFT (``tools``: each conversation's tool schemas); rows with input_ids and labels."""
    stats = stats if stats is not None else EncodeStats()
    tools = tools or [None] * len(conversations)
    _check_tools(template, conversations, tools)
    rendered: list[Rendered] = []
    for number, (messages, schemas) in enumerate(zip(conversations, tools), 1):
        stats.examples += 1
        try:
            rendered.append(render_with_spans(template, messages, entry, schemas))
        except TemplateRefusal as exc:
            stats.dropped_refused += 1
            if len(stats.refusals) < 5:
                stats.refusals.append(f"example {number}: {exc}")
    rows = []
    for batch_start in range(0, len(rendered), 256):
        batch = rendered[batch_start : batch_start + 256]
        encoded = tokenizer([r.text for r in batch], add_special_tokens=False, return_offsets_mapping=True)
        for r, ids, offsets in zip(batch, encoded["input_ids"], encoded["offset_mapping"]):
            ids, offsets = list(ids), list(offsets)
            if r.spans and _straddles(offsets, r.spans[-1][0]):
                ids, offsets = _encode_at_last_reply(tokenizer, r)
            spans = r.spans[-1:] if mask_history else r.spans
            labels = list(ids) if train_on_prompt else labels_for(offsets, spans, ids)
            row = _cut(ids, labels, cutoff_len, stats)
            if row is not None:
                rows.append(row)
    return rows


def _check_tools(template: ChatTemplate, conversations: list[list[dict]], tools: list) -> None:
    """Refuse tool-use conversations for a template that cannot render them (they would train as plain text)."""
    if supports_tools(template):
        return
    count = sum(1 for messages, schemas in zip(conversations, tools)
                if schemas or any(m.get("tool_calls") or m["role"] == "tool" for m in messages))
    if count:
        able = sorted(t.name for t in registry().templates.values() if "tools" in t.quirks)[:8]
        raise DataError(f"{count} example(s) use tools (schemas, calls or results), which template {template.name!r} "
                        f"cannot render; pick a template with tool support, e.g. {', '.join(able)}")


def _straddles(offsets: list[tuple[int, int]], position: int) -> bool:
    """Whether one token covers text on both sides of ``position`` (a prompt/reply merge)."""
    return any(start < position < end for start, end in offsets)


def _encode_at_last_reply(tokenizer: Any, rendered: Rendered) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize prompt, last reply and the rest separately, so the prompt tokens are exactly the ones
    inference sends (e.g. a prompt ending in "ASSISTANT: " keeps its space token instead of merging it
    into the reply's first word)."""
    start, end = rendered.spans[-1]
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for begin, stop in ((0, start), (start, end), (end, len(rendered.text))):
        if stop <= begin:
            continue
        piece = tokenizer(rendered.text[begin:stop], add_special_tokens=False, return_offsets_mapping=True)
        ids += list(piece["input_ids"])
        offsets += [(a + begin, b + begin) for a, b in piece["offset_mapping"]]
    return ids, offsets


def encode_texts(tokenizer: Any, texts: list[str], *, cutoff_len: int, stats: EncodeStats | None = None) -> list[dict[str, list[int]]]:
    """Tokenize plain texts for pre-training: text + eos, every token trained."""
    stats = stats if stats is not None else EncodeStats()
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None else []
    rows = []
    for batch_start in range(0, len(texts), 256):
        encoded = tokenizer(texts[batch_start : batch_start + 256], add_special_tokens=False)
        for ids in encoded["input_ids"]:
            stats.examples += 1
            ids = bos + list(ids) + eos
            row = _cut(ids, list(ids), cutoff_len, stats)
            if row is not None:
                rows.append(row)
    return rows


def _cut(ids: list[int], labels: list[int], cutoff_len: int, stats: EncodeStats) -> dict[str, list[int]] | None:
    if len(ids) > cutoff_len:
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
        if all(label == IGNORE for label in labels):
            stats.dropped_too_long += 1
            return None
        stats.truncated += 1
    if all(label == IGNORE for label in labels):
        stats.dropped_no_loss += 1
        return None
    stats.kept += 1
    stats.tokens += len(ids)
    stats.trained_tokens += sum(label != IGNORE for label in labels)
    return {"input_ids": ids, "labels": labels}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash that changes whenever the tokenizer would split text differently."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a VLM's processor: its tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.bos_token, tokenizer.eos_token, getattr(tokenizer, "add_bos_token", None)])
    return hashlib.sha256((payload + extra).encode()).hexdigest()[:16]
