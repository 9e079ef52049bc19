"""Stage grpo: group relative policy optimisation with reward functions (trl's GRPOTrainer).

Rows are ``{"prompt": [messages], **extra}``: trl renders the prompt with the tokenizer's chat template, which is
set to the registry template (with its bos/eos and render options), so generation sees exactly what inference
sends; the extra columns (e.g. ``answer``) reach the reward functions as keyword lists.
"""

from __future__ import annotations

import logging
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.datasets import DataError
from tunelab.core.rewards import build_rewards
from tunelab.core.serving import vllm_importable
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.stages.base import StageContext, not_fast, trainer_kwargs, training_args
from tunelab.engine.stages.sft import with_system
from tunelab.engine.tokenize import EncodeStats

log = logging.getLogger(__name__)

# Keyword names trl itself passes to reward functions: a dataset column may not take them.
RESERVED_COLUMNS = ("prompt", "prompts", "completion", "completions", "completion_ids", "trainer_state",
                    "log_extra", "log_metric", "environments")


def render_kwargs(choice: TemplateChoice) -> dict[str, Any]:
    """What the registry template renders with beside the messages (bos/eos and its options), for trl's
    ``chat_template_kwargs``."""
    template, entry = choice.template, choice.entry
    kwargs: dict[str, Any] = {
        "bos_token": (entry.bos_token if entry and entry.bos_token is not None else template.bos_token) or "",
        "eos_token": (entry.eos_token if entry and entry.eos_token is not None else template.eos_token) or "",
    }
    return {**kwargs, **template.render_kwargs, **(entry.render_kwargs if entry else {})}


def encode(
    config: RunConfig, examples: list[dict], tokenizer: Any, choice: TemplateChoice | None, stats: EncodeStats
) -> list[dict]:
    """Prompts -> trl's conversational prompt rows; prompts longer than cutoff_len tokens are dropped (counted)."""
    assert choice is not None
    needs_answer = "exact_answer" in config.reward_funcs
    rows = []
    for index, example in enumerate(examples):
        extra = example.get("extra") or {}
        clash = [k for k in extra if k in RESERVED_COLUMNS]
        if clash:
            raise DataError(f"example {index}: column {clash[0]!r} is reserved by the trainer; rename it")
        if needs_answer and extra.get("answer") is None:
            raise DataError(f"example {index}: reward exact_answer needs an 'answer' column, which this row lacks")
        stats.examples += 1
        messages = with_system(example["messages"], config.system_prompt)
        text = choice.template.render(messages, add_generation_prompt=True, model=choice.entry).text
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if length > config.cutoff_len:
            stats.dropped_too_long += 1
            continue
        stats.kept += 1
        stats.tokens += length
        rows.append({"prompt": messages, **extra})
    return rows


def booster_blocker(config: RunConfig) -> str | None:
    """trl computes the policy's log-probabilities itself."""
    return not_fast(config.stage)


def generation_engine(config: RunConfig) -> tuple[str, str]:
    """(engine, reason): vllm (colocated) or hf, per ``generation_engine``."""
    import torch

    has_vllm = vllm_importable()
    if config.generation_engine == "hf":
        return "hf", "generation_engine: hf"
    if config.generation_engine == "vllm":
        if not has_vllm:
            from tunelab.core.config import ConfigError

            raise ConfigError("generation_engine: 'vllm' needs vllm installed in the training environment; "
                              "valid choices here: auto, hf")
        return "vllm", "generation_engine: vllm"
    if has_vllm and torch.cuda.is_available():
        return "vllm", "auto: vllm is importable and a CUDA GPU is present"
    return "hf", "auto: " + ("no CUDA GPU" if has_vllm else "vllm is not installed")


def rl_kwargs(ctx: StageContext) -> dict[str, Any]:
    """The GRPOConfig/RLOOConfig fields GRPO and RLOO map alike."""
    config = ctx.config
    engine, reason = generation_engine(config)
    log.info("generation: %s (%s)", "vLLM colocated" if engine == "vllm" else "transformers generate", reason)
    ctx.run_.set_status("running", generation_engine=engine)
    assert ctx.choice is not None
    ctx.tokenizer.chat_template = ctx.choice.template.source
    return dict(
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        beta=config.beta,
        temperature=config.temperature,
        reward_weights=config.reward_weights,
        chat_template_kwargs=render_kwargs(ctx.choice),
        use_vllm=engine == "vllm",
        vllm_mode="colocate",
        remove_unused_columns=False,
        include_num_input_tokens_seen="no",  # trl logs num_tokens (prompt + completion) itself
        log_completions=False,
    )


def build_trainer(ctx: StageContext) -> Any:
    """trl's GRPOTrainer with the run's checked reward functions."""
    from trl import GRPOConfig, GRPOTrainer

    args = training_args(ctx, GRPOConfig, loss_type=ctx.config.grpo_loss, **rl_kwargs(ctx))
    return GRPOTrainer(args=args, reward_funcs=build_rewards(ctx.config.reward_funcs), **trainer_kwargs(ctx))
