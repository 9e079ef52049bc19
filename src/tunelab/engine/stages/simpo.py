"""Stage simpo: simple preference optimisation — a length-normalised, reference-free margin loss with target
margin ``simpo_gamma`` (trl.experimental's CPOTrainer with loss_type "simpo" and no behaviour-cloning term)."""

from __future__ import annotations

from typing import Any

from tunelab.core.config import RunConfig
from tunelab.engine.stages.base import StageContext, not_fast, trainer_kwargs, training_args
from tunelab.engine.stages.orpo import experimental_trainer
from tunelab.engine.stages.pairs import encode_texts_pairs

encode = encode_texts_pairs  # CPO's trainer tokenizes rendered text itself


def booster_blocker(config: RunConfig) -> str | None:
    """trl's CPO computes log-probabilities from the LM head itself."""
    return not_fast(config.stage)


def build_trainer(ctx: StageContext) -> Any:
    """RunConfig -> CPOConfig(loss_type="simpo") + CPOTrainer."""
    config_class, trainer_class = experimental_trainer("cpo", ("CPOConfig", "CPOTrainer"))
    args = training_args(
        ctx, config_class, loss_type="simpo", cpo_alpha=0.0, beta=ctx.config.beta, simpo_gamma=ctx.config.simpo_gamma,
        max_length=ctx.config.cutoff_len, remove_unused_columns=False,
    )
    return trainer_class(args=args, **trainer_kwargs(ctx))
