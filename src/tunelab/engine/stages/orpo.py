"""Stage orpo: odds-ratio preference optimisation — SFT on the chosen reply plus an odds-ratio penalty on the
rejected one, no reference model (trl.experimental's ORPOTrainer; ``beta`` is ORPO's lambda)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.engine.stages.base import StageContext, not_fast, trainer_kwargs, training_args
from tunelab.engine.stages.pairs import encode_texts_pairs

log = logging.getLogger(__name__)
encode = encode_texts_pairs  # ORPO's trainer tokenizes rendered text itself


def booster_blocker(config: RunConfig) -> str | None:
    """trl's ORPO computes log-probabilities from the LM head itself."""
    return not_fast(config.stage)


def experimental_trainer(module: str, names: tuple[str, str]) -> tuple[type, type]:
    """(config class, trainer class) from trl.experimental, without its "experimental" warning in every log."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = importlib.import_module(f"trl.experimental.{module}")
    return getattr(loaded, names[0]), getattr(loaded, names[1])


def build_trainer(ctx: StageContext) -> Any:
    """RunConfig -> ORPOConfig + ORPOTrainer."""
    config_class, trainer_class = experimental_trainer("orpo", ("ORPOConfig", "ORPOTrainer"))
    args = training_args(
        ctx, config_class, beta=ctx.config.beta, max_length=ctx.config.cutoff_len, remove_unused_columns=False,
    )
    return trainer_class(args=args, **trainer_kwargs(ctx))
