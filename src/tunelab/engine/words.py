"""Byte-level BPE tokenization through a word memo: the same ids as the Rust tokenizer, cheaper.

A byte-level BPE tokenizer (GPT-2, Llama 3, Qwen 2/3, DeepSeek) cuts text at its added tokens, splits each piece
into words with a regular expression, and runs BPE on each word alone. Real text repeats its words (Zipf), so
tunelab remembers each word's ids: the tokenizer's own BPE model runs once per distinct word. A piece of printable
ASCII (with tab, newline and carriage return) is split in Python's C regex engine; a piece with any other character
is split by the tokenizer's own pre-tokenizer (only on ASCII are the two regex engines' Unicode classes sure to
agree), or, when the tokenizer's normalizer would change it, tokenized by the Rust tokenizer alone (it tokenizes
each piece between added tokens on its own inside the text too). The memo is used only for a tokenizer whose
pipeline it reproduces (read from the tokenizer's JSON) and that gives the Rust tokenizer's ids and token
boundaries on a probe set of tricky strings.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Any

import regex  # the engine with Unicode classes (a dependency of transformers too)

log = logging.getLogger(__name__)

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
OTHER = re.compile(r"[^\t\n\r\x20-\x7e]")  # a character that sends the piece to the Rust pre-tokenizer
NEVER = "\\x00"  # in no text this module takes (NUL is sent to Rust)
CATEGORIES = {name: name for name in ("L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
              "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So")} | {
    "Letter": "L", "Mark": "M", "Number": "N", "Punctuation": "P", "Symbol": "S"}  # the \p{..} names taken
NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD"}  # the identity on ASCII
POST_PROCESSORS = {"TemplateProcessing", "BertProcessing"}  # add tokens only when asked; offsets untouched
CONTEXTS = ("a@b", " @", "@ ", "1@1", "@@", "'@", "!@!", "\n@\n", " @a", "a@ ", "@'s", "\t@1", "@a1", " @@ ")
# where a character's classes (letter, mark, number, space, punctuation, ...) decide the split: checked once per
# character outside ASCII before the regex engine splits text with it
CHECK_EVERY = 500  # texts per one checked against the Rust tokenizer
MEMO_LIMIT = 200_000  # distinct words remembered (then forgotten at once): memory stays flat on any dataset
PROBES = (
    "Hello world! I'm here, you're there; they've gone. We'll see: it's 12345 or 3.14159e-10?",
    "DON'T SHOUT'S 'quoted' ''double'' it''s  a\tb\t\tc\n\nd \n e   \r\n  f \n\n\n",
    "   leading and trailing   ", "x" * 70 + " " + "ab1" * 12, "!!!???...,,,;;; --- ___ +++ ===",
    "def f(x):\n    return x**2  # comment\n\n\tprint(f'{x}')\r\n", "A1b2C3 d4e5 99 bottles 1,000,000 0x1F",
    "user\nWhat is 2+2?\nASSISTANT:Four.\n\n### Response:\n", "'s's't're've'm'll'd 'S 'T 'RE",
    "Où est le café? 日本語で 🚀 naïve\u00a0crème\tbrûlée\x0b\x00 Ünïcödé’s “quotes” — ok", "\u200b\u3000 \U0001f680\U0001f680.",
)


@dataclass
class Words:
    """A text's ids and where its words start: ``bounds`` (characters) and ``starts`` (tokens), each with the end."""

    ids: list[int]
    bounds: list[int]
    starts: list[int]

    def labels(self, spans: tuple[tuple[int, int], ...], ignore: int) -> list[int] | None:
        """The ids of the tokens inside the spans, ``ignore`` elsewhere; None when a span edge falls inside a word
        (the tokens there are for the Rust tokenizer's offsets to settle)."""
        labels = [ignore] * len(self.ids)
        for begin, end in spans:
            first, stop = self._word_at(begin), self._word_at(end)
            if first is None or stop is None:
                return None
            labels[self.starts[first] : self.starts[stop]] = self.ids[self.starts[first] : self.starts[stop]]
        return labels

    def _word_at(self, position: int) -> int | None:
        index = bisect.bisect_left(self.bounds, position)
        return index if index < len(self.bounds) and self.bounds[index] == position else None


class WordEncoder:
    """Encodes text with a word memo in front of a byte-level BPE tokenizer's own model."""

    def __init__(self, backend: Any, splits: list[re.Pattern], added: list[re.Pattern], added_ids: dict[str, int],
                 piecewise: bool = True, unicode_splits: list[Any] | None = None):
        self.backend = backend
        self.piecewise = piecewise  # a piece between added tokens tokenizes alone as it does in the text
        self.model = backend.model
        self.normalizer, self.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
        self.splits = splits
        self.unicode_splits = unicode_splits  # the same expressions in the regex module, for text outside ASCII
        self.chars: dict[str, bool] = {}  # a character outside ASCII: whether the regex module splits around it as Rust does
        self.added = added
        self.added_ids = added_ids
        self.memo: dict[str, tuple[int, ...]] = {}
        self.count = 0
        self.off = False
        self.to_bytes_alphabet = str.maketrans(_byte_alphabet())  # latin-1 code points (the UTF-8 bytes) to BPE's

    @classmethod
    def of(cls, backend: Any) -> WordEncoder | None:
        """The encoder for a Rust tokenizer, or None when its pipeline is not one this reproduces exactly."""
        spec = json.loads(backend.to_str())
        sources = _sources(spec)
        splits = None if sources is None else _compiled(sources, _ascii_pattern)
        added = _added(spec)
        if sources is None or splits is None or added is None or not _plain_pipeline(spec, backend):
            return None
        normalized = any(t.get("normalized") for t in spec.get("added_tokens") or [])
        encoder = cls(backend, splits, *added, piecewise=not (normalized and spec.get("normalizer")),
                      unicode_splits=_compiled(sources, _unicode_pattern))
        marked = tuple(f"{token}user\n{token}Hi there{token} \n{token}Où? 🚀{token}" for token in list(added[1])[:64])
        return encoder if encoder.agrees(backend, PROBES + marked) else None

    def encode(self, text: str) -> Words | None:
        """The text's ids and word bounds, or None when it holds a character this leaves to the Rust tokenizer and
        the tokenizer matches some added tokens after normalizing (then only the whole text goes to Rust exactly).
        Every CHECK_EVERY-th text is checked against the Rust tokenizer; a difference turns the memo off."""
        if self.off:
            return None
        self.count += 1
        if self.count % CHECK_EVERY == 0 and not self.agrees(self.backend, [text]):
            self.off = True
            log.warning("the word memo disagreed with the tokenizer on a text; the rest is tokenized by the tokenizer")
            return None
        return self._encode(text)

    def _encode(self, text: str) -> Words | None:
        words: list[str] = []
        ids: list[tuple[int, ...]] = []
        memo, miss = self.memo.get, self._miss
        for piece, is_added in self._pieces(text):
            if is_added:
                words.append(piece)
                ids.append((self.added_ids[piece],))
                continue
            if not OTHER.search(piece):
                found = self._words(piece)
            elif not self.piecewise:
                return None
            else:
                found = self._other_words(piece)
                if found is None:
                    self._by_rust(piece, words, ids)
                    continue
            words += found
            ids += [memo(word) or miss(word) for word in found]
        return Words(list(chain.from_iterable(ids)), [0, *accumulate(map(len, words))], [0, *accumulate(map(len, ids))])

    def _other_words(self, piece: str) -> list[str] | None:
        """The words of a piece with other characters: split by the regex module when each such character was seen
        to split as it does in the tokenizer, else by the tokenizer's own pre-tokenizer. None (the Rust tokenizer
        takes the piece alone) when the normalizer would change it or the pre-tokenizer's words do not tile it."""
        if self.normalizer is not None and self.normalizer.normalize_str(piece) != piece:
            return None
        if self.unicode_splits is not None and all(map(self._splits_alike, set(OTHER.findall(piece)))):
            return self._words(piece, self.unicode_splits)
        return self._rust_words(piece)

    def _rust_words(self, text: str) -> list[str] | None:
        """The text's words as the tokenizer's pre-tokenizer splits it; None when they do not tile it."""
        out, end = [], 0
        for _, (start, stop) in self.pre_tokenizer.pre_tokenize_str(text):
            if start != end:
                return None
            out.append(text[start:stop])
            end = stop
        return out if end == len(text) else None

    def _splits_alike(self, char: str) -> bool:
        """Whether the regex module splits text around ``char`` as the tokenizer does, in every CONTEXTS (once)."""
        known = self.chars.get(char)
        if known is None:
            assert self.unicode_splits is not None
            texts = [context.replace("@", char) for context in CONTEXTS]
            known = self.chars[char] = all(
                (self.normalizer is None or self.normalizer.normalize_str(text) == text)
                and self._words(text, self.unicode_splits) == self._rust_words(text) for text in texts)
        return known

    def _by_rust(self, piece: str, words: list[str], ids: list[tuple[int, ...]]) -> None:
        """A piece between added tokens tokenized alone by the Rust tokenizer (as it tokenizes it inside the text),
        cut into units wherever a token ends where the next one starts (bytes of one character stay together)."""
        encoding = self.backend.encode(piece, add_special_tokens=False)
        units: list[list[int]] = []
        unit_ids: list[list[int]] = []
        end = 0
        for token, (start, stop) in zip(encoding.ids, encoding.offsets):
            if units and (start < end or stop <= start):  # shares a character with the unit before, or is empty
                unit_ids[-1].append(token)
                units[-1][1] = max(units[-1][1], stop)
            else:
                units.append([end, max(stop, end)])  # a gap before the token joins it
                unit_ids.append([token])
            end = units[-1][1]
        if units:
            units[-1][1] = len(piece)
        else:
            units, unit_ids = [[0, len(piece)]], [[]]
        words += [piece[begin:stop] for begin, stop in units]
        ids += [tuple(unit) for unit in unit_ids]

    def agrees(self, backend: Any, texts: tuple[str, ...] | list[str]) -> bool:
        """Whether the memo gives the Rust tokenizer's ids on ``texts``, each word's tokens inside the word."""
        for text, encoding in zip(texts, backend.encode_batch(list(texts), add_special_tokens=False)):
            words = self._encode(text)
            if words is None:
                continue
            if words.ids != encoding.ids:
                return False
            for k in range(len(words.bounds) - 1):
                inside = encoding.offsets[words.starts[k] : words.starts[k + 1]]
                if any(start < words.bounds[k] or end > words.bounds[k + 1] for start, end in inside):
                    return False
        return True

    def _pieces(self, text: str) -> list[tuple[str, bool]]:
        """The text cut at its added tokens (those matched before normalization first, as the tokenizer does)."""
        pieces = [(text, False)]
        for pattern in self.added:
            cut: list[tuple[str, bool]] = []
            for piece, is_added in pieces:
                if is_added:
                    cut.append((piece, True))
                else:
                    cut += [(part, bool(k % 2)) for k, part in enumerate(pattern.split(piece)) if part]
            pieces = cut
        return pieces

    def _words(self, piece: str, splits: list[Any] | None = None) -> list[str]:
        words = [piece]
        for pattern in splits or self.splits:
            found = [word for part in words for word in pattern.findall(part)]
            if sum(map(len, found)) != sum(map(len, words)):  # text between matches: words too (Split "Isolated")
                found = [word for part in words for word in _isolated(pattern, part)]
            words = found
        return words

    def _miss(self, word: str) -> tuple[int, ...]:
        """BPE of one word (written in byte-level BPE's alphabet: one character per UTF-8 byte), remembered."""
        if len(self.memo) >= MEMO_LIMIT:
            self.memo.clear()
        spelled = word if word.isascii() else word.encode("utf-8").decode("latin-1")
        ids = tuple(token.id for token in self.model.tokenize(spelled.translate(self.to_bytes_alphabet)))
        self.memo[word] = ids
        return ids


def _isolated(pattern: re.Pattern, text: str) -> list[str]:
    """The text cut into the pattern's matches and the stretches between them."""
    out, end = [], 0
    for match in pattern.finditer(text):
        if match.start() > end:
            out.append(text[end : match.start()])
        if match.end() > match.start():
            out.append(match.group())
        end = match.end()
    if end < len(text):
        out.append(text[end:])
    return out


def _byte_alphabet() -> dict[str, str]:
    """Byte-level BPE's printable stand-in for each byte, keyed by the latin-1 character of that byte (GPT-2's
    bytes_to_unicode)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in kept]
    table = {b: chr(b) for b in kept} | {b: chr(256 + n) for n, b in enumerate(moved)}
    return {chr(b): table[b] for b in range(256)}


def _sources(spec: dict) -> list[str] | None:
    """The word-splitting expressions of the pre-tokenizer (onig syntax); None when its pipeline is unsupported."""
    steps = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    if not steps or not _byte_level(steps[-1]):
        return None
    sources = []
    for step in steps[:-1]:
        pattern = step.get("pattern") or {}
        if step.get("type") != "Split" or step.get("behavior") != "Isolated" or step.get("invert") or "Regex" not in pattern:
            return None
        sources.append(pattern["Regex"])
    if steps[-1].get("use_regex", True):
        sources.append(GPT2_SPLIT)
    return sources


def _compiled(sources: list[str], compile_one: Any) -> list[Any] | None:
    patterns = [compile_one(source) for source in sources]
    return None if any(p is None for p in patterns) else patterns


def _unicode_pattern(source: str) -> Any:
    r"""An onig pattern in the regex module; None when it will not compile. Its \p{..} classes are Unicode's, as
    onig's are, but the two may read a character differently: each character outside ASCII is checked in CONTEXTS
    before this splits text holding it."""
    try:
        return regex.compile(_no_groups(source))
    except regex.error:
        return None


def _no_groups(source: str) -> str:
    """The pattern with its capturing groups made non-capturing: findall then returns whole words."""
    out, in_class, k = [], False, 0
    while k < len(source):
        char = source[k]
        if char == "\\":
            out.append(source[k : k + 2])
            k += 2
            continue
        if char == "(" and not in_class and source[k + 1 : k + 2] != "?":
            char = "(?:"
        elif char in "[]":
            in_class = char == "["
        out.append(char)
        k += 1
    return "".join(out)


def _steps(node: dict | None, key: str) -> list[dict]:
    """A pipeline stage's steps: a Sequence's ``key`` list, a single step alone, none when absent."""
    if not node:
        return []
    return node.get(key, []) if node.get("type") == "Sequence" else [node]


def _byte_level(step: dict) -> bool:
    return step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False)


def _ascii_pattern(source: str) -> re.Pattern | None:
    r"""An onig pattern as a ``re`` pattern over ASCII text: each ``\p{..}`` becomes its ASCII members."""
    source = _no_groups(source)
    out, in_class, k = [], False, 0
    while k < len(source):
        char = source[k]
        if char == "\\" and source[k + 1 : k + 3] == "p{":
            close = source.find("}", k)
            category = CATEGORIES.get(source[k + 3 : close])
            if category is None:
                return None
            members = _ascii_members(category)
            out.append((members or NEVER) if in_class else f"[{members or NEVER}]")
            k = close + 1
            continue
        if char == "\\":
            if source[k + 1 : k + 2] in ("P", "X", "G", "A", "z", "Z", "K", "R"):
                return None  # onig escapes re lacks or reads otherwise
            out.append(source[k : k + 2])
            k += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            if source[k + 1 : k + 2] == "^":
                out.append("[^")
                k += 2
                continue
        elif char == "[":
            return None  # nested classes
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        k += 1
    try:
        return re.compile("".join(out), re.ASCII)
    except re.error:
        return None


def _ascii_members(category: str) -> str:
    """The printable ASCII characters of a Unicode general category, escaped for a character class."""
    return "".join(re.escape(c) for c in map(chr, range(0x20, 0x7F)) if unicodedata.category(c).startswith(category))


def _added(spec: dict) -> tuple[list[re.Pattern], dict[str, int]] | None:
    """Patterns cutting text at the added tokens (raw-text ones first, then the normalized ones), their ids."""
    tokens = spec.get("added_tokens") or []
    if any(t.get("single_word") or t.get("lstrip") or t.get("rstrip") or not t.get("content") for t in tokens):
        return None
    groups = [[t["content"] for t in tokens if bool(t.get("normalized")) is normalized] for normalized in (False, True)]
    patterns = [re.compile("(" + "|".join(re.escape(c) for c in sorted(group, key=len, reverse=True)) + ")")
                for group in groups if group]  # longest first: the leftmost-longest match the tokenizer makes
    return patterns, {t["content"]: t["id"] for t in tokens}


def _plain_pipeline(spec: dict, backend: Any) -> bool:
    """A normalizer that leaves ASCII alone, a BPE without dropout and nothing that moves the offsets."""
    if any(step.get("type") not in NORMALIZERS for step in _steps(spec.get("normalizer"), "normalizers")):
        return False
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        return False
    for step in _steps(spec.get("post_processor"), "processors"):
        if step.get("type") not in POST_PROCESSORS and not (step.get("type") == "ByteLevel" and not step.get("trim_offsets")):
            return False
    return not backend.encode_special_tokens
