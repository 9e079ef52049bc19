"""The word memo gives the Rust tokenizer's ids, word for word, on the byte-level pipelines it takes (GPT-2's,
Llama 3's, Qwen 2's and DeepSeek-V3's splits, seeded random ASCII with the awkward characters), leaves other text to Rust, and
refuses pipelines it does not reproduce."""

from __future__ import annotations

import json
import random

import pytest
import regex

from tests.tiny import tiny_tokenizer
from tunelab.engine import tokenize, words
from tunelab.engine.tokenize import IGNORE, encode_conversations
from tunelab.engine.words import WordEncoder

SPECIALS = ["<|im_start|>", "<|im_end|>", "<tool>"]
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
PUNCTUATION = (r"[!-/:-@\[-`{-~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")  # DeepSeek-V3's shape: digits first, then punctuation and symbol classes
PIECES = (list("abcXYZ019 '\t\n") + ["\r\n", "  ", "'s", "'LL", "'Re", "hello", "World", "12345", "...", "!?", "__",
          "(x)", "{y}", "$%^&*", "+=", "~|@`", '"', "\\", "/", ";:", ",", "-", "<", ">", "#"] + SPECIALS)


def _backend(pre_tokenizer: dict | None = None, normalizer: dict | None = None, post: dict | None = None,
             added: dict | None = None):
    """The tiny byte-level BPE with another pre-tokenizer, normalizer, post-processor or added-token flags."""
    from tokenizers import Tokenizer

    spec = json.loads(tiny_tokenizer(SPECIALS).backend_tokenizer.to_str())
    if pre_tokenizer is not None:
        spec["pre_tokenizer"] = pre_tokenizer
    spec["normalizer"] = normalizer
    spec["post_processor"] = post
    for token in spec["added_tokens"]:
        token.update(added or {})
    return Tokenizer.from_str(json.dumps(spec))


def _split_then_bytes(*patterns: str) -> dict:
    splits = [{"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in patterns]
    return {"type": "Sequence", "pretokenizers": [
        *splits, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


OTHERS = ["é", "café", "日本語", "🚀", "\u00a0", "Ü", "’s", "—", "\x0b", "\x00", "e\u0301", "٣", "Ⅻ"]  # e + combining accent: not NFC


def _texts(seed: int, count: int = 400, pieces: list[str] = PIECES) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(count)]


PIPELINES = {
    "gpt2": {},
    "llama3": {"pre_tokenizer": _split_then_bytes(LLAMA3),
               "post": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}},
    "qwen2": {"pre_tokenizer": _split_then_bytes(QWEN2), "normalizer": {"type": "NFC"}},
    "deepseek": {"pre_tokenizer": _split_then_bytes(r"\p{N}{1,3}", PUNCTUATION)},
}


@pytest.mark.parametrize("name", PIPELINES)
def test_the_memo_gives_the_rust_ids_word_for_word(name: str) -> None:
    backend = _backend(**PIPELINES[name])
    encoder = WordEncoder.of(backend)
    assert encoder is not None
    texts = _texts(seed=len(name))
    for text, encoding in zip(texts, backend.encode_batch(texts, add_special_tokens=False)):
        found = encoder.encode(text)
        assert found is not None and found.ids == encoding.ids, text
    assert encoder.agrees(backend, texts)  # each word's tokens lie inside the word
    assert encoder.memo, "the memo filled"


@pytest.mark.parametrize("name", PIPELINES)
def test_other_characters_are_split_by_the_tokenizer_and_still_give_its_ids(name: str) -> None:
    backend = _backend(**PIPELINES[name])
    encoder = WordEncoder.of(backend)
    assert encoder is not None
    texts = _texts(seed=len(name) + 1, pieces=PIECES + OTHERS * 3)
    for text, encoding in zip(texts, backend.encode_batch(texts, add_special_tokens=False)):
        found = encoder.encode(text)
        assert found is not None and found.ids == encoding.ids, text
    assert encoder.agrees(backend, texts)  # each word's tokens lie inside the word
    assert any(map(words.OTHER.search, encoder.memo)), "words with other characters come from the memo too"


def test_a_character_the_regex_engines_read_differently_is_split_by_the_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(**PIPELINES["llama3"])
    encoder = WordEncoder.of(backend)
    assert encoder is not None
    texts = ["Où est le café? 日本語 🚀", "naïve\u00a0crème — ok"]
    expected = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    assert [encoder.encode(t).ids for t in texts] == expected
    assert encoder.chars and all(encoder.chars.values()), "characters both engines read alike: the regex module splits"
    monkeypatch.setattr(words, "_unicode_pattern", lambda source: regex.compile(r"[^\s]+|\s+"))  # reads them otherwise
    wrong = WordEncoder.of(backend)
    assert wrong is not None
    assert [wrong.encode(t).ids for t in texts] == expected  # the tokenizer's own pre-tokenizer split them
    assert wrong.chars and not any(wrong.chars.values())


def test_other_characters_and_unsupported_pipelines() -> None:
    backend = _backend()
    encoder = WordEncoder.of(backend)
    assert encoder is not None
    texts = ["café", "日本", "tab\x0bvertical", "nul\x00", "bell\x07", "🚀", "<|im_start|>Où<|im_end|> plain <tool>x\u00a0"]
    for text, encoding in zip(texts, backend.encode_batch(texts, add_special_tokens=False)):
        assert encoder.encode(text).ids == encoding.ids, text
    assert encoder.agrees(backend, texts) and " plain" in encoder.memo and "café" in encoder.memo
    nfc = _backend(**PIPELINES["qwen2"])
    encoder = WordEncoder.of(nfc)
    assert encoder is not None
    [encoding] = nfc.encode_batch(["cafe\u0301 ok"], add_special_tokens=False)
    assert encoder.encode("cafe\u0301 ok").ids == encoding.ids  # the normalizer changes the piece: Rust takes it
    assert not [word for word in encoder.memo if "\u0301" in word]
    after_normalizing = WordEncoder.of(_backend(normalizer={"type": "NFC"}, added={"normalized": True}))
    assert after_normalizing is not None and after_normalizing.encode("café") is None  # then the whole text to Rust
    refused = {
        "metaspace": {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}},
        "lowercase": {"normalizer": {"type": "Lowercase"}},
        "trimmed offsets": {"post": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                     "use_regex": True}},
        "lstrip token": {"added": {"lstrip": True}},
        "unknown class": {"pre_tokenizer": _split_then_bytes(r"\p{Han}+|\S+|\s+")},
        "inverted split": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Isolated", "invert": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}},
    }
    for reason, change in refused.items():
        assert WordEncoder.of(_backend(**change)) is None, reason


def test_a_split_that_disagrees_with_rust_is_caught_by_the_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(words, "GPT2_SPLIT", r"\S+|\s+")  # not what the Rust pre-tokenizer does
    assert WordEncoder.of(_backend()) is None


def test_labels_need_span_edges_between_words() -> None:
    encoder = WordEncoder.of(_backend())
    assert encoder is not None
    text = "<|im_start|>user hi<|im_end|><|im_start|>assistant hello there<|im_end|>"
    found = encoder.encode(text)
    assert found is not None
    start = text.index(" hello")
    labels = found.labels(((start, len(text)),), IGNORE)
    tail = encoder.encode(text[start:]).ids
    assert labels == [IGNORE] * (len(found.ids) - len(tail)) + tail
    assert found.labels(((start + 3, len(text)),), IGNORE) is None  # inside " hello": Rust's offsets decide


def test_the_memo_forgets_at_its_limit_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(words, "MEMO_LIMIT", 8)
    backend = _backend()
    encoder = WordEncoder.of(backend)
    assert encoder is not None
    texts = _texts(seed=7, count=100)
    assert [encoder.encode(t).ids for t in texts] == [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    assert len(encoder.memo) <= 8


def test_mixed_batches_keep_their_order_and_equal_the_rust_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.core.templates import registry

    template = registry().get("chatml")
    tokenizer = tiny_tokenizer(SPECIALS)
    rng = random.Random(3)
    conversations = []
    for i in range(60):
        reply = " ".join(rng.choice(["river", "café", "water", "12", "it's", "日本", "ok!"]) for _ in range(rng.randint(1, 9)))
        conversations.append([{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": reply}])
    assert tokenize.TokenEncoder(tokenizer).words is not None
    runs = []
    for memo in (True, False):
        if not memo:
            monkeypatch.setattr(tokenize, "_word_encoder", lambda backend: None)
        runs.append([encode_conversations(tokenizer, template, conversations, cutoff_len=24, **options)
                     for options in ({}, {"mask_history": True}, {"train_on_prompt": True})])
        runs[-1].append(tokenize.encode_texts(tokenizer, [c[1]["content"] for c in conversations], cutoff_len=8))
    assert runs[0] == runs[1]


def test_a_text_checked_against_rust_that_differs_turns_the_memo_off(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(words, "CHECK_EVERY", 3)
    encoder = WordEncoder.of(_backend())
    assert encoder is not None
    encoder.memo[" world"] = (7,)  # a wrong memo entry, as a bug would leave
    assert encoder.encode("hello world") is not None and encoder.encode("hello world") is not None
    assert encoder.encode("hello world") is None and encoder.off  # the third: checked, differs
    assert encoder.encode("plain") is None
    assert "disagreed" in caplog.text
