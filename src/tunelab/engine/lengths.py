"""Token lengths of canonical examples with the real tokenizer and template (for `tunelab data check`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.core.chat_render import TemplateRefusal
from tunelab.engine.tokenize import IGNORE, EncodeStats, encode_conversations, encode_texts, render_with_spans

UNCUT = 10**9


@dataclass
class Lengths:
    """Per-example token lengths and what the cutoff would do to them."""

    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    refused: list[str] = field(default_factory=list)


def measure(examples: list[dict], fmt: str, tokenizer: Any, choice: Any, cutoff: int) -> Lengths:
    """Token lengths of ``examples`` (format ``fmt``) and how many rows ``cutoff`` truncates or drops."""
    out = Lengths()
    if fmt == "text":
        for row in encode_texts(tokenizer, [e["text"] for e in examples], cutoff_len=UNCUT):
            out.lengths.append(len(row["input_ids"]))
            out.truncated += len(row["input_ids"]) > cutoff
        return out
    if "chosen" not in examples[0] and "completion" not in examples[0] and "extra" not in examples[0]:
        stats = EncodeStats()
        rows = encode_conversations(tokenizer, choice.template, [e["messages"] for e in examples], cutoff_len=UNCUT,
                                    entry=choice.entry, stats=stats, tools=[e.get("tools") for e in examples])
        out.refused = stats.refusals
        for row in rows:
            out.lengths.append(len(row["input_ids"]))
            if len(row["input_ids"]) > cutoff:
                kept = row["labels"][:cutoff]
                if all(label == IGNORE for label in kept):
                    out.dropped += 1
                else:
                    out.truncated += 1
        return out
    for number, example in enumerate(examples, 1):
        replies = [example[k] for k in ("chosen", "rejected", "completion") if k in example] or [""]
        try:
            prompt = choice.template.render(example["messages"], add_generation_prompt=True, model=choice.entry).text
            full = [render_with_spans(choice.template, [*example["messages"], {"role": "assistant", "content": r}],
                                      choice.entry).text for r in replies]
        except TemplateRefusal as exc:
            out.refused.append(f"example {number}: {exc}")
            continue
        prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in full)
        out.lengths.append(longest)
        if prompt_len >= cutoff:
            out.dropped += 1
        elif longest > cutoff:
            out.truncated += 1
    return out
