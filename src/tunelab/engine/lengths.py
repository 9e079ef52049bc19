"""Token lengths of canonical examples with the real tokenizer and template (for `tunelab data check`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.config import RunConfig
from tunelab.engine.prepare import EncodeJob, encode_stream, worker_count
from tunelab.engine.tokenize import render_with_spans

UNCUT = 10**9


@dataclass
class Lengths:
    """Per-example token lengths and what the cutoff would do to them."""

    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    refused: list[str] = field(default_factory=list)


def measure(examples: list[dict], fmt: str, tokenizer: Any, choice: Any, cutoff: int, workers: int = 0) -> Lengths:
    """Token lengths of ``examples`` (format ``fmt``) and how many rows ``cutoff`` truncates or drops; text and
    conversations are tokenized as training tokenizes them (batched, in ``workers`` processes, 0: one per core)."""
    out = Lengths()
    if fmt == "text" or ("chosen" not in examples[0] and "completion" not in examples[0] and "extra" not in examples[0]):
        config = RunConfig(stage="pt" if fmt == "text" else "sft", cutoff_len=UNCUT)
        plain = ({k: v for k, v in e.items() if k != "images"} for e in examples)  # lengths of the text alone
        result = encode_stream(EncodeJob(config, tokenizer, choice), plain, total=len(examples), out_dir=None,
                               workers=worker_count(workers, len(examples)), lengths=True)
        out.refused = result.stats.refusals
        for length, first_trained in result.lengths:
            out.lengths.append(length)
            if length > cutoff and first_trained >= cutoff:
                out.dropped += 1
            elif length > cutoff:
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
