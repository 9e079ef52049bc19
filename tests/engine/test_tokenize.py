"""Loss masks come from the template: exactly the assistant content plus end-of-turn carries loss, and the
prompt tokens are the very tokens inference sends."""

from __future__ import annotations

import pytest

from tests.tiny import tiny_tokenizer
from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.templates import registry
from tunelab.engine.tokenize import IGNORE, EncodeStats, encode_conversations, encode_texts

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "The capital of Italy is Rome."},
]


def _specials(template, messages) -> list[str]:
    """Marker tokens of a template, read off a render (the <|...|>, [INST]-style and <...> pieces)."""
    import re

    text = template.render(messages).text
    found = re.findall(r"<\|[^|<>]+\|>|<[a-zA-Z_/][^<>\s]{0,30}>|\[/?[A-Z_]+\]", text)
    return found + [t for t in (template.bos_token, template.eos_token, *template.stop_tokens) if t]


def _messages_for(template):
    """The test conversation, without its system turn when the family refuses one."""
    for messages in (CONVERSATION, CONVERSATION[1:]):
        try:
            template.render(messages)
            template.render(messages[:-1], add_generation_prompt=True)
            template.render(messages[: messages.index(CONVERSATION[2])], add_generation_prompt=True)
            return messages
        except TemplateRefusal:
            continue
    raise TemplateRefusal("refuses the test conversation")


def _families() -> list[str]:
    chosen = []
    for name, template in sorted(registry().templates.items()):
        if "completion" in template.quirks or "classifier" in template.quirks:
            continue
        try:
            spans = template.render(_messages_for(template), track_spans=True).spans
        except TemplateRefusal:
            continue
        if len(spans) == 2:  # classifier formats (e.g. a safety judge) have no reply turns to train
            chosen.append(name)
    return chosen


FAMILIES = _families()


def test_enough_families_are_checked() -> None:
    assert len(FAMILIES) >= 20


@pytest.mark.parametrize("name", FAMILIES)
def test_masks_cover_exactly_the_assistant_turns(name: str) -> None:
    template = registry().get(name)
    messages = _messages_for(template)
    tokenizer = tiny_tokenizer(_specials(template, messages), bos=template.bos_token or "<s>", eos=template.eos_token or "</s>")
    row = encode_conversations(tokenizer, template, [messages], cutoff_len=4096)[0]
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE])
    full = template.render(messages).text
    for reply in ("The capital of France is Paris.", "The capital of Italy is Rome."):
        assert reply in trained and reply in full
    for prompt in ("What is the capital of France?", "And of Italy?", "You are terse."):
        assert prompt not in trained
    # Where the template renders history as a prefix of the longer conversation (most do; some move the system
    # prompt or drop thoughts), the prompt part of training is token-for-token what inference sends.
    prompt_text = template.render(messages[:-1], add_generation_prompt=True).text
    if full.startswith(prompt_text):
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        assert row["input_ids"][: len(prompt_ids)] == prompt_ids
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    first_text = template.render(messages[:first], add_generation_prompt=True).text
    if full.startswith(first_text):
        first_ids = tokenizer(first_text, add_special_tokens=False)["input_ids"]
        # (the last prompt token may merge with the reply's first character in history turns)
        assert all(label == IGNORE for label in row["labels"][: len(first_ids) - 1])
    # The end-of-turn token closes the last reply and carries loss, when the family has one after replies.
    eot = template.stop_strings
    last_trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE][-1:])
    tail = full[full.rindex("The capital of Italy is Rome.") + len("The capital of Italy is Rome."):]
    if any(stop in tail for stop in eot):
        assert any(stop.endswith(last_trained.strip()) or last_trained in stop for stop in eot), (last_trained, eot)


def test_mask_history_and_train_on_prompt() -> None:
    template = registry().get("chatml")
    tokenizer = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")
    last = encode_conversations(tokenizer, template, [CONVERSATION], cutoff_len=4096, mask_history=True)[0]
    trained = tokenizer.decode([t for t, l in zip(last["input_ids"], last["labels"]) if l != IGNORE])
    assert trained == "The capital of Italy is Rome.<|im_end|>"
    everything = encode_conversations(tokenizer, template, [CONVERSATION], cutoff_len=4096, train_on_prompt=True)[0]
    assert everything["labels"] == everything["input_ids"]


def test_cutoff_counts_truncated_and_dropped() -> None:
    template = registry().get("chatml")
    tokenizer = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    stats = EncodeStats()
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, " * 20}]
    rows = encode_conversations(tokenizer, template, [short, long_prompt], cutoff_len=30, stats=stats)
    assert len(rows) == 1 and len(rows[0]["input_ids"]) == 30
    assert (stats.truncated, stats.dropped_too_long, stats.kept) == (1, 1, 1)


def test_pretraining_text_ends_with_eos() -> None:
    tokenizer = tiny_tokenizer()
    rows = encode_texts(tokenizer, ["A river carries water."], cutoff_len=64)
    assert rows[0]["input_ids"][-1] == tokenizer.eos_token_id and rows[0]["labels"] == rows[0]["input_ids"]
