"""Stage rloo: REINFORCE leave-one-out with reward functions (trl's RLOOTrainer); data and fields as grpo."""

from __future__ import annotations

from typing import Any

from tunelab.core.rewards import build_rewards
from tunelab.engine.stages.base import StageContext, trainer_kwargs, training_args
from tunelab.engine.stages.grpo import booster_blocker, encode, rl_kwargs

__all__ = ["booster_blocker", "build_trainer", "encode"]


def build_trainer(ctx: StageContext) -> Any:
    """trl's RLOOTrainer with the run's checked reward functions."""
    from trl import RLOOConfig, RLOOTrainer

    args = training_args(ctx, RLOOConfig, **rl_kwargs(ctx))
    return RLOOTrainer(args=args, reward_funcs=build_rewards(ctx.config.reward_funcs), **trainer_kwargs(ctx))
