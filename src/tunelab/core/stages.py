"""The training stages, as one table: what data each takes, which trl trainer runs it, what it reports.

Pure data (no torch): the CLI, the web UI and validation read it; ``tunelab.engine.stages.<name>`` holds each
stage's code (encoding, trainer mapping, fast-path rule).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    """One training stage."""

    name: str
    title: str
    formats: tuple[str, ...]  # dataset formats (core.datasets) the stage trains on
    trainer: str  # the trl trainer class behind it
    metrics: tuple[str, ...]  # the headline metrics a run of this stage logs (beside loss)
    chat: bool = True  # whether the result is a generative model to chat with (a reward model is not)
    template: bool = True  # whether examples are rendered through a chat template


_TABLE = (
    StageInfo("pt", "pre-training", ("text",), "SFTTrainer", ()),
    StageInfo("sft", "supervised fine-tuning", ("alpaca", "sharegpt", "openai"), "SFTTrainer", ()),
    StageInfo("rm", "reward model", ("preference",), "RewardTrainer", ("accuracy", "margin"), chat=False),
    StageInfo("dpo", "direct preference optimisation", ("preference",), "DPOTrainer",
              ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")),
    StageInfo("orpo", "odds-ratio preference optimisation", ("preference",), "ORPOTrainer (trl.experimental)",
              ("rewards/margins", "rewards/accuracies", "log_odds_ratio")),
    StageInfo("simpo", "simple preference optimisation", ("preference",), "CPOTrainer, loss simpo (trl.experimental)",
              ("rewards/margins", "rewards/accuracies")),
    StageInfo("kto", "Kahneman-Tversky optimisation", ("kto",), "KTOTrainer",
              ("rewards/margins", "rewards/chosen", "rewards/rejected", "kl")),
    StageInfo("grpo", "group relative policy optimisation", ("prompt",), "GRPOTrainer",
              ("reward", "reward_std", "kl", "completions/mean_length")),
)
STAGES: dict[str, StageInfo] = {}
for _info in _TABLE:
    if _info.name in STAGES:
        raise ValueError(f"duplicate stage {_info.name!r}")
    STAGES[_info.name] = _info
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
PREFERENCE_STAGES = ("dpo", "orpo", "simpo")


def stage_info(name: str) -> StageInfo:
    """The stage called ``name``; ValueError naming the valid choices."""
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"stage {name!r} is unknown; valid choices: {', '.join(STAGE_NAMES)}") from None
