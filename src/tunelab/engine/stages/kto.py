"""Stage kto: Kahneman-Tversky optimisation on unpaired replies labelled desirable or undesirable (trl's
KTOTrainer). The reference model follows ``ref_model`` like DPO (LoRA: the adapter-disabled base)."""

from __future__ import annotations

import random
from typing import Any

from tunelab.core.config import ConfigError, RunConfig
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.stages.base import PreTokenized, StageContext, not_fast, trainer_kwargs, training_args
from tunelab.engine.stages.dpo import load_reference
from tunelab.engine.stages.pairs import Encoder
from tunelab.engine.tokenize import EncodeStats


def encode(
    config: RunConfig, examples: list[dict], tokenizer: Any, choice: TemplateChoice | None, stats: EncodeStats
) -> list[dict]:
    """KTO examples -> prompt_ids, completion_ids, label; shuffled once with the run's seed (trl reads KTO data in
    order, since each example's KL term pairs it with its neighbour)."""
    encoded = Encoder(config, tokenizer, choice, stats).encode(examples, ("completion",))
    rows = [{"prompt_ids": prompt, "completion_ids": completion, "label": bool(example["label"])}
            for example, prompt, (completion,) in encoded]
    random.Random(config.seed).shuffle(rows)
    return rows


def booster_blocker(config: RunConfig) -> str | None:
    """trl's KTO computes log-probabilities from the LM head itself."""
    return not_fast(config.stage)


def _trainer_class() -> type:
    from trl import KTOTrainer

    class TunelabKTOTrainer(PreTokenized, KTOTrainer):
        """KTOTrainer over tunelab's pre-tokenized rows; the KL completions are built as trl builds them."""

        def _after_tokenized(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
            if not self.calculate_KL:
                return dataset

            def rotate(batch: dict) -> dict:
                batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                return batch

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

    return TunelabKTOTrainer


def build_trainer(ctx: StageContext) -> Any:
    """RunConfig -> KTOConfig + KTOTrainer."""
    from trl import KTOConfig

    config = ctx.config
    if config.batch_size < 2:
        raise ConfigError("batch_size: kto needs at least 2 (its KL estimate pairs each example with a neighbour)")
    labels = ctx.data.train["label"]
    if all(labels) or not any(labels):
        raise ConfigError("dataset: kto needs both desirable (label true) and undesirable (label false) examples")
    if config.ref_model == "none":
        raise ConfigError("ref_model: 'none' is not supported by kto (its rewards are log-ratios to a reference)")
    args = training_args(
        ctx, KTOConfig, beta=config.beta, desirable_weight=config.kto_desirable_weight,
        undesirable_weight=config.kto_undesirable_weight, max_length=config.cutoff_len, remove_unused_columns=False,
        dataset_num_proc=None,
    )
    return _trainer_class()(args=args, ref_model=load_reference(config, ctx.path), **trainer_kwargs(ctx))
