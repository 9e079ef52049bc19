"""Stage pt: continued pre-training on plain text, every token trained (trl's SFTTrainer)."""

from __future__ import annotations

from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.stages.sft import sft_trainer
from tunelab.engine.tokenize import EncodeStats, encode_texts

STREAMS = True  # rows are token ids alone: engine.data tokenizes them in chunks, in several processes

def encode(
    config: RunConfig, examples: list[dict], tokenizer: Any, choice: TemplateChoice | None, stats: EncodeStats
) -> list[dict]:
    """Texts -> input_ids + labels (text + eos)."""
    return encode_texts(tokenizer, [e["text"] for e in examples], cutoff_len=config.cutoff_len, stats=stats)


def booster_blocker(config: RunConfig) -> str | None:
    """Pre-training runs on the fast path."""
    return None


build_trainer = sft_trainer
