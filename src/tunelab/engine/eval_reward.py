"""The ``reward`` metric of ``tunelab eval``: the mean reward of a GRPO/RLOO run's reward functions on held-out
prompts, for the base and the tuned model (greedy completions rendered through the run's template)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tunelab.core.config import RL, ConfigError, RunConfig
from tunelab.core.datasets import DataError
from tunelab.core.eval_config import EvalConfig
from tunelab.core.rewards import build_rewards, check_spec
from tunelab.core.sources import ModelSource
from tunelab.core.template_choice import TemplateChoice

log = logging.getLogger(__name__)


def reward_setup(cfg: EvalConfig, source: ModelSource) -> tuple[RunConfig, list[float] | None, str]:
    """(run config yielding the prompt rows and naming the reward functions, their weights, where the prompts
    come from). A grpo/rloo run brings its own; otherwise reward_funcs and dataset must be given."""
    base = source.run_config
    rl_run = base is not None and base.stage in RL
    if not rl_run and not (cfg.reward_funcs and cfg.dataset):
        raise ConfigError("metrics: 'reward' needs a grpo/rloo run, or reward_funcs=... and dataset=... (prompts)")
    update: dict[str, Any] = {}
    if cfg.reward_funcs:
        update["reward_funcs"] = [check_spec(spec) for spec in cfg.reward_funcs]
    if cfg.dataset:
        update.update(dataset=cfg.dataset, dataset_dir=cfg.dataset_dir or (base.dataset_dir if base else None),
                      val_size=0.0)
        what = f"dataset {', '.join(cfg.dataset)}"
    elif base is not None and base.val_size > 0:
        what = f"the run's held-out prompts (val_size={base.val_size})"
    else:
        what = "the run's training prompts (it has no validation split, val_size=0: this measures fit, not generalization)"
    if rl_run:
        assert base is not None
        weights = None if cfg.reward_funcs else base.reward_weights
        return base.model_copy(update=update), weights, what
    model = base.model if base is not None else source.model
    run_config = RunConfig(model=model, template=source.template, stage="grpo", batch_size=4, **update)
    return run_config, None, what


def prompt_rows(
    cfg: EvalConfig, source: ModelSource, tokenizer: Any, choice: TemplateChoice
) -> tuple[list[dict], str, RunConfig]:
    """The prompt rows ({"prompt": messages, **columns}) to score, and where they came from."""
    from tunelab.engine.data import prepare_data

    run_config, _, what = reward_setup(cfg, source)
    data = prepare_data(run_config, tokenizer, choice)
    held_out = not cfg.dataset and data.eval is not None
    rows = list(data.eval if held_out else data.train)
    rows = rows[: cfg.max_samples] if cfg.max_samples else rows
    if not rows:
        raise DataError(f"no prompts to score in {what}")
    return rows, what, run_config


def score_rewards(cfg: EvalConfig, source: ModelSource, tokenizer: Any, choice: TemplateChoice, use: Any,
                  sides: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(metric rows, per-prompt records, description): mean weighted reward, and each function's mean."""
    from tunelab.engine.eval_lm import generate
    from tunelab.engine.export import stop_token_ids
    from tunelab.engine.scoring import mean_metric

    rows, what, run_config = prompt_rows(cfg, source, tokenizer, choice)
    _, weights, _ = reward_setup(cfg, source)
    rewards = build_rewards(run_config.reward_funcs)
    weights = weights or [1.0] * len(rewards)
    prompts = [tokenizer(choice.template.render(r["prompt"], add_generation_prompt=True, model=choice.entry).text,
                         add_special_tokens=False)["input_ids"] for r in rows]
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
    new_tokens = run_config.max_completion_length if source.run_config and source.run_config.stage in RL else cfg.max_new_tokens
    stops = choice.stop_strings
    texts: dict[str, list[str]] = {}
    scores: dict[str, np.ndarray] = {}  # side -> (examples, functions)
    for side in sides:
        with use(side) as model:
            log.info("%s: generating for %d prompts", side, len(prompts))
            texts[side] = generate(model, tokenizer, prompts, new_tokens, cfg.batch_size,
                                   stop_token_ids(tokenizer, stops), stops)
        completions = [[{"role": "assistant", "content": t}] for t in texts[side]]
        prompt_messages = [r["prompt"] for r in rows]
        per_function = [reward(prompt_messages, completions, **columns) for reward in rewards]
        scores[side] = np.array([[s if s is not None else np.nan for s in f] for f in per_function]).T
    # the weighted sum per completion, None counting as 0 (as trl's nansum does)
    totals = {side: np.nansum(values * np.asarray(weights), axis=1) for side, values in scores.items()}
    metrics = [mean_metric("reward", totals["tuned"], totals.get("base"))]
    if len(rewards) > 1:
        for index, reward in enumerate(rewards):
            base = scores["base"][:, index] if "base" in scores else None
            metrics.append(mean_metric(f"reward/{reward.__name__}", np.nan_to_num(scores["tuned"][:, index]),
                                       np.nan_to_num(base) if base is not None else None))
    records = [{"index": i, "prompt": r["prompt"], **{side: texts[side][i] for side in sides}}
               for i, r in enumerate(rows)]
    return metrics, records, what

