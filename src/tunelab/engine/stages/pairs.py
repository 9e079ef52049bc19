"""Encoding prompt -> reply examples for the preference stages, through the registry template.

The prompt is rendered with the generation prompt (the exact string inference sends) and tokenized alone; the
reply is the rest of the rendered conversation up to the end of the assistant turn (its end-of-turn token
included, what SFT trains too), tokenized apart so the prompt's tokens never merge into the reply's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.config import RunConfig
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.stages.sft import with_system
from tunelab.engine.tokenize import EncodeStats, render_with_spans


class Encoder:
    """Renders and tokenizes (prompt, reply) pairs for one run, counting what it keeps, cuts and drops."""

    def __init__(self, config: RunConfig, tokenizer: Any, choice: TemplateChoice | None, stats: EncodeStats):
        assert choice is not None
        self.config, self.tokenizer, self.choice, self.stats = config, tokenizer, choice, stats

    def prompt_text(self, messages: list[dict]) -> str:
        """The prompt as inference renders it (system prompt added where the run sets one)."""
        messages = with_system(messages, self.config.system_prompt)
        return self.choice.template.render(messages, add_generation_prompt=True, model=self.choice.entry).text

    def reply_text(self, messages: list[dict], prompt: str, reply: str) -> str:
        """The text the template adds after ``prompt`` for the assistant ``reply``, through its end of turn."""
        messages = with_system(messages, self.config.system_prompt)
        rendered = render_with_spans(self.choice.template, [*messages, {"role": "assistant", "content": reply}],
                                     self.choice.entry)
        if not rendered.spans or not rendered.text.startswith(prompt):
            raise TemplateRefusal("the prompt does not render as a prefix of the conversation with its reply")
        end = rendered.spans[-1][1]
        if end <= len(prompt):
            raise TemplateRefusal("the reply renders empty")
        return rendered.text[len(prompt):end]

    def ids(self, text: str) -> list[int]:
        """Token ids of a rendered piece (special tokens are in the text already)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def refuse(self, number: int, exc: Exception) -> None:
        """Count an example the template cannot render."""
        self.stats.dropped_refused += 1
        if len(self.stats.refusals) < 5:
            self.stats.refusals.append(f"example {number}: {exc}")

    def encode(self, examples: list[dict], reply_keys: tuple[str, ...]) -> Iterator[tuple[dict, list[int], list[list[int]]]]:
        """(example, prompt ids, reply ids per ``reply_keys``) for each example the template renders and that fits;
        refused and too-long examples are counted and skipped."""
        for number, example in enumerate(examples, 1):
            try:
                prompt = self.prompt_text(example["messages"])
                replies = [self.reply_text(example["messages"], prompt, example[key]) for key in reply_keys]
            except TemplateRefusal as exc:
                self.refuse(number, exc)
                continue
            prompt_ids = self.ids(prompt)
            fitted = self.fit(prompt_ids, [self.ids(reply) for reply in replies])
            if fitted is not None:
                yield example, prompt_ids, fitted

    def fit(self, prompt_ids: list[int], replies: list[list[int]]) -> list[list[int]] | None:
        """Cut replies so prompt + each reply fits cutoff_len; None (dropped, counted) when the prompt alone does not."""
        self.stats.examples += 1
        cutoff = self.config.cutoff_len
        if len(prompt_ids) >= cutoff:
            self.stats.dropped_too_long += 1
            return None
        room = cutoff - len(prompt_ids)
        if any(len(reply) > room for reply in replies):
            self.stats.truncated += 1
            replies = [reply[:room] for reply in replies]
        self.stats.kept += 1
        self.stats.tokens += sum(len(prompt_ids) + len(reply) for reply in replies)
        self.stats.trained_tokens += sum(len(reply) for reply in replies)
        return replies


def encode_pairs(
    config: RunConfig, examples: list[dict], tokenizer: Any, choice: TemplateChoice | None, stats: EncodeStats
) -> list[dict]:
    """Preference examples -> rows of prompt_ids, chosen_ids, rejected_ids (the shape trl's DPO collator takes)."""
    encoded = Encoder(config, tokenizer, choice, stats).encode(examples, ("chosen", "rejected"))
    return [{"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected} for _, prompt, (chosen, rejected) in encoded]


def encode_texts_pairs(
    config: RunConfig, examples: list[dict], tokenizer: Any, choice: TemplateChoice | None, stats: EncodeStats
) -> list[dict]:
    """Preference examples -> rendered prompt/chosen/rejected strings, for trl trainers that tokenize text
    themselves (ORPO, CPO/SimPO); too-long examples are counted the same way."""
    token_rows = encode_pairs(config, examples, tokenizer, choice, stats)
    return [
        {
            "prompt": tokenizer.decode(row["prompt_ids"], skip_special_tokens=False),
            "chosen": tokenizer.decode(row["chosen_ids"], skip_special_tokens=False),
            "rejected": tokenizer.decode(row["rejected_ids"], skip_special_tokens=False),
        }
        for row in token_rows
    ]
