"""Stage rm: a reward model — the base with a one-output sequence-classification head, trained on chosen/rejected
pairs to score chosen higher (trl's RewardTrainer). It is evaluated by pairwise accuracy, not chatted with."""

from __future__ import annotations

from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.stages.base import StageContext, not_fast, trainer_kwargs, training_args
from tunelab.engine.stages.pairs import encode_pairs
from tunelab.engine.tokenize import EncodeStats


def encode(
    config: RunConfig, examples: list[dict], tokenizer: Any, choice: TemplateChoice | None, stats: EncodeStats
) -> list[dict]:
    """Preference examples -> whole chosen and rejected sequences (chosen_ids, rejected_ids)."""
    return [
        {"chosen_ids": row["prompt_ids"] + row["chosen_ids"], "rejected_ids": row["prompt_ids"] + row["rejected_ids"]}
        for row in encode_pairs(config, examples, tokenizer, choice, stats)
    ]


def booster_blocker(config: RunConfig) -> str | None:
    """The fast path covers language-model heads only."""
    return "stage 'rm' (a sequence-classification head; the fast path covers pt and sft)"


def load_model(config: RunConfig, path: str) -> Any:
    """The base model with a new scalar score head."""
    from transformers import AutoModelForSequenceClassification

    from tunelab.engine.model import load_model as load

    return load(config, path, auto_class=AutoModelForSequenceClassification, num_labels=1)


def build_trainer(ctx: StageContext) -> Any:
    """RunConfig -> RewardConfig + RewardTrainer."""
    from trl import RewardConfig, RewardTrainer

    ctx.model.config.pad_token_id = ctx.tokenizer.pad_token_id
    args = training_args(ctx, RewardConfig, max_length=ctx.config.cutoff_len, remove_unused_columns=False,
                         dataset_num_proc=None)
    return RewardTrainer(args=args, **trainer_kwargs(ctx))
