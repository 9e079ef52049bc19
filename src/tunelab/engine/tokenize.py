"""Tokenize canonical examples into input_ids and labels, with loss masks taken from the chat template.

The conversation is rendered once (the same string inference sends) and tokenized once; a token carries loss
when it overlaps a ``{% generation %}`` span of the template (assistant content plus end-of-turn). Templates
without generation markers (a model's own) get their assistant spans from prefix renders instead.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tunelab.core.chat_render import Rendered, TemplateRefusal
from tunelab.core.datafiles import DataError
from tunelab.core.templates import ChatTemplate, ModelEntry, registry
from tunelab.engine.words import WordEncoder

IGNORE = -100
BATCH = 1024  # texts per tokenizer call


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
    return _labels(offsets, _Positions.of(offsets), spans, ids)


def _labels(offsets: list[tuple[int, int]], positions: _Positions | None, spans: tuple[tuple[int, int], ...],
            ids: list[int]) -> list[int]:
    ranges = _loss_ranges(positions, spans)
    if ranges is None:
        return _labels_by_walk(offsets, spans, ids)
    labels = [IGNORE] * len(ids)
    for first, stop in ranges:
        labels[first:stop] = ids[first:stop]
    return labels


def _labels_by_walk(offsets: list[tuple[int, int]], spans: tuple[tuple[int, int], ...], ids: list[int]) -> list[int]:
    """labels_for token by token: for offsets out of order or spans that overlap."""
    labels = [IGNORE] * len(ids)
    span_index = 0
    for i, (start, end) in enumerate(offsets):
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        if span_index < len(spans) and end > spans[span_index][0] and start < spans[span_index][1]:
            labels[i] = ids[i]
    return labels


def _loss_ranges(positions: _Positions | None, spans: tuple[tuple[int, int], ...]) -> list[tuple[int, int]] | None:
    """Token index ranges [first, stop) overlapping the spans, found by bisection; None unless the token offsets
    are in order and the spans sorted and disjoint (then it labels exactly the tokens the walk labels)."""
    if positions is None or any(spans[k][1] > spans[k + 1][0] for k in range(len(spans) - 1)):
        return None
    return [(first, stop) for first, stop in (positions.overlapping(a, b) for a, b in spans) if stop > first]


@dataclass(frozen=True)
class _Positions:
    """Token start and end offsets, both non-decreasing, searched by bisection."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def of(cls, offsets: list[tuple[int, int]]) -> _Positions | None:
        """The offsets as sorted columns, or None when they are out of order."""
        if not offsets:
            return cls((), ())
        starts, ends = zip(*offsets)
        if list(starts) != sorted(starts) or list(ends) != sorted(ends):
            return None
        return cls(starts, ends)

    def overlapping(self, begin: int, end: int) -> tuple[int, int]:
        """[first, stop): the tokens with end > begin and start < end."""
        return bisect.bisect_right(self.ends, begin), bisect.bisect_left(self.starts, end)

    def straddles(self, position: int) -> bool:
        """Whether one token covers text on both sides of ``position``."""
        last_before = bisect.bisect_left(self.starts, position) - 1
        return last_before >= 0 and self.ends[last_before] > position


class TokenEncoder:
    """Tokenizes rendered text without special tokens: through a word memo where the tokenizer is a byte-level BPE
    the memo reproduces (engine.words), the rest by a fast tokenizer's Rust backend in one batched
    call (the very call transformers makes, without its conversion to Python dicts), any other tokenizer through
    transformers."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.backend = _plain_backend(tokenizer)
        self.words = _word_encoder(self.backend) if self.backend is not None else None

    def encode(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, character offsets) of each text."""
        if self.backend is not None:
            return [(e.ids, e.offsets) for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [(list(ids), list(offsets)) for ids, offsets in zip(encoded["input_ids"], encoded["offset_mapping"])]

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text."""
        found = [self.words.encode(text) for text in texts] if self.words is not None else [None] * len(texts)
        rest = iter(self._ids([text for text, words in zip(texts, found) if words is None]))
        return [words.ids if words is not None else next(rest) for words in found]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]


_WORD_ENCODERS: dict[tuple[int, int], tuple[Any, WordEncoder | None]] = {}


def _word_encoder(backend: Any) -> WordEncoder | None:
    """One word encoder per Rust tokenizer (and vocabulary size) in this process: its memo fills across chunks."""
    key = (id(backend), backend.get_vocab_size(with_added_tokens=True))
    if key not in _WORD_ENCODERS:
        while len(_WORD_ENCODERS) >= 4:
            del _WORD_ENCODERS[next(iter(_WORD_ENCODERS))]
        _WORD_ENCODERS[key] = (backend, WordEncoder.of(backend))  # the backend held: its id stays its own
    return _WORD_ENCODERS[key][1]


def _plain_backend(tokenizer: Any) -> Any:
    """The Rust tokenizer when calling it directly gives what transformers' call gives: a TokenizersBackend whose
    encoding step no subclass overrides, with no truncation or padding set and special tokens kept whole."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    encode_plus = getattr(type(tokenizer), "_encode_plus", None)
    if backend is None or getattr(encode_plus, "__qualname__", "") != "TokenizersBackend._encode_plus":
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    if bool(backend.encode_special_tokens) != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


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
    """Tokenize conversations for SFT (``tools``: each conversation's tool schemas); rows with input_ids and labels.
    Example numbers in refusals continue from ``stats.examples``, so batches sharing a stats object number alike."""
    stats = stats if stats is not None else EncodeStats()
    tools = tools or [None] * len(conversations)
    _check_tools(template, conversations, tools)
    rendered: list[Rendered] = []
    for messages, schemas in zip(conversations, tools):
        stats.examples += 1
        try:
            rendered.append(render_with_spans(template, messages, entry, schemas))
        except TemplateRefusal as exc:
            stats.dropped_refused += 1
            if len(stats.refusals) < 5:
                stats.refusals.append(f"example {stats.examples}: {exc}")
    encoder = TokenEncoder(tokenizer)
    rows = []
    for batch_start in range(0, len(rendered), BATCH):
        for ids, labels in _encode_rendered(encoder, rendered[batch_start : batch_start + BATCH], train_on_prompt,
                                            mask_history):
            row = _cut(list(ids), labels, cutoff_len, stats)
            if row is not None:
                rows.append(row)
    return rows


def _encode_rendered(encoder: TokenEncoder, batch: list[Rendered], train_on_prompt: bool,
                     mask_history: bool) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each rendered conversation: through the word memo where the loss spans used (they include
    the last reply, where the Rust path would re-tokenize a merged token) start and end between words, the rest in
    one Rust call."""
    out: list[tuple[list[int], list[int]] | None] = [None] * len(batch)
    for k, r in enumerate(batch):
        words = encoder.words.encode(r.text) if encoder.words is not None else None
        labels = words.labels(r.spans[-1:] if mask_history else r.spans, IGNORE) if words is not None else None
        if words is not None and labels is not None:
            out[k] = (words.ids, list(words.ids) if train_on_prompt else labels)
    rest = [k for k, done in enumerate(out) if done is None]
    for k, (ids, offsets) in zip(rest, encoder.encode([batch[k].text for k in rest]) if rest else []):
        r = batch[k]
        positions = _Positions.of(offsets)
        if r.spans and _straddles_at(offsets, r.spans[-1][0], positions):
            ids, offsets = _encode_at_last_reply(encoder, r)
            positions = _Positions.of(offsets)
        spans = r.spans[-1:] if mask_history else r.spans
        out[k] = (ids, list(ids) if train_on_prompt else _labels(offsets, positions, spans, ids))
    return out  # type: ignore[return-value]


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
    return _straddles_at(offsets, position, _Positions.of(offsets))


def _straddles_at(offsets: list[tuple[int, int]], position: int, positions: _Positions | None) -> bool:
    if positions is not None:
        return positions.straddles(position)
    return any(start < position < end for start, end in offsets)


def _encode_at_last_reply(encoder: Any, rendered: Rendered) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize prompt, last reply and the rest separately (``encoder``: a TokenEncoder or a tokenizer), so the
    prompt tokens are exactly the ones inference sends (e.g. a prompt ending in "ASSISTANT: " keeps its space
    token instead of merging it into the reply's first word)."""
    encoder = encoder if isinstance(encoder, TokenEncoder) else TokenEncoder(encoder)
    start, end = rendered.spans[-1]
    bounds = [(begin, stop) for begin, stop in ((0, start), (start, end), (end, len(rendered.text))) if stop > begin]
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for (begin, _), (piece_ids, piece_offsets) in zip(bounds, encoder.encode([rendered.text[b:e] for b, e in bounds])):
        ids += list(piece_ids)
        offsets += [(a + begin, b + begin) for a, b in piece_offsets]
    return ids, offsets


def encode_texts(tokenizer: Any, texts: list[str], *, cutoff_len: int, stats: EncodeStats | None = None) -> list[dict[str, list[int]]]:
    """Tokenize plain texts for pre-training: text + eos, every token trained."""
    stats = stats if stats is not None else EncodeStats()
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None else []
    encoder = TokenEncoder(tokenizer)
    rows = []
    for batch_start in range(0, len(texts), BATCH):
        for ids in encoder.ids(texts[batch_start : batch_start + BATCH]):
            stats.examples += 1
            ids = bos + list(ids) + eos
            row = _cut(ids, list(ids), cutoff_len, stats)
            if row is not None:
                rows.append(row)
    return rows


def _cut(ids: list[int], labels: list[int], cutoff_len: int, stats: EncodeStats) -> dict[str, list[int]] | None:
    cut = len(ids) > cutoff_len
    if cut:
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    trained = len(labels) - labels.count(IGNORE)
    if trained == 0:
        if cut:
            stats.dropped_too_long += 1
        else:
            stats.dropped_no_loss += 1
        return None
    stats.truncated += cut
    stats.kept += 1
    stats.tokens += len(ids)
    stats.trained_tokens += trained
    return {"input_ids": ids, "labels": labels}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash that changes whenever the tokenizer would split text differently."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a VLM's processor: its tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.bos_token, tokenizer.eos_token, getattr(tokenizer, "add_bos_token", None)])
    return hashlib.sha256((payload + extra).encode()).hexdigest()[:16]
