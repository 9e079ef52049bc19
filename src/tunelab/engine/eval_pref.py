"""Preference accuracy, base vs fine-tuned: how often the chosen reply beats the rejected one.

- A causal LM ranks by log-likelihood of the reply given the prompt (summed over the reply's tokens, the ones a
  preference stage trains); the fine-tuned side is also scored by DPO's implicit reward (its log-ratio to the base,
  the reference a LoRA run trains against).
- A reward model (stage rm) ranks by its score; its base has no trained head, so only the tuned side is reported.
Standard errors are those of a mean of 0/1 outcomes (paired for the delta).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tunelab.core.datasets import DataError
from tunelab.core.eval_config import EvalConfig
from tunelab.core.sources import ModelSource
from tunelab.core.template_choice import TemplateChoice

log = logging.getLogger(__name__)
PAIRED_STAGES = ("rm", "dpo", "orpo", "simpo")


def load_pairs(cfg: EvalConfig, source: ModelSource, tokenizer: Any, choice: TemplateChoice | None) -> tuple[list[dict], str]:
    """Tokenized (prompt_ids, chosen_ids, rejected_ids) rows: the named datasets, else the run's validation split."""
    from tunelab.core.config import RunConfig
    from tunelab.engine.data import prepare_data
    from tunelab.engine.eval_lm import pick_rows

    base = source.run_config
    update: dict[str, Any] = {"stage": "dpo", "packing": False}
    if cfg.cutoff_len:
        update["cutoff_len"] = cfg.cutoff_len
    if cfg.dataset:
        update.update(dataset=cfg.dataset, val_size=0.0, max_samples=cfg.max_samples,
                      dataset_dir=cfg.dataset_dir or (base.dataset_dir if base else None))
    elif base is None or base.stage not in PAIRED_STAGES:
        raise DataError("metrics: 'preference' needs chosen/rejected pairs: give dataset=... (a preference dataset)")
    config = base.model_copy(update=update) if base else RunConfig(model=source.model, **update)
    data = prepare_data(config, tokenizer, choice)
    return pick_rows(cfg, data, data.eval is not None, config.val_size, "preference pairs")


def _batches(rows: list[dict], batch_size: int, key: str) -> Any:
    for start in range(0, len(rows), batch_size):
        yield [(r["prompt_ids"], r[key]) for r in rows[start : start + batch_size]]


def _padded(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    reply = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(pairs):
        n = len(prompt) + len(completion)
        ids[i, :n] = torch.tensor(prompt + completion)
        mask[i, :n] = 1
        reply[i, len(prompt):n] = True
    return ids, mask, reply


def _per_row(model: Any, rows: list[dict], key: str, batch_size: int, pad_id: int, score: Any) -> np.ndarray:
    """``score(logits, ids, reply_mask)`` (one value per row of a batch) over the padded prompt + reply batches."""
    import torch

    device = next(model.parameters()).device
    out: list[float] = []
    for pairs in _batches(rows, batch_size, key):
        ids, mask, reply = (t.to(device) for t in _padded(pairs, pad_id))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            out += score(logits, ids, reply).double().cpu().tolist()
    return np.array(out)


def reply_logps(model: Any, rows: list[dict], key: str, batch_size: int, pad_id: int) -> np.ndarray:
    """Summed log-probability of each row's reply (``chosen_ids`` or ``rejected_ids``) given its prompt."""
    import torch

    def summed(logits: Any, ids: Any, reply: Any) -> Any:
        logps = torch.log_softmax(logits.float()[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (logps * reply[:, 1:]).sum(dim=1)

    return _per_row(model, rows, key, batch_size, pad_id, summed)


def reward_scores(model: Any, rows: list[dict], key: str, batch_size: int, pad_id: int) -> np.ndarray:
    """A reward model's score of each row's prompt + reply."""
    return _per_row(model, rows, key, batch_size, pad_id, lambda logits, ids, reply: logits[:, 0])


def preference_rows(cfg: EvalConfig, rows: list[dict], use: Any, sides: list[str], pad_id: int,
                    reward_model: bool) -> list[dict[str, Any]]:
    """preference_accuracy (and, for a causal LM with a base, implicit_reward_accuracy) rows."""
    from tunelab.engine.scoring import mean_metric

    if reward_model:
        with use("tuned") as model:
            chosen = reward_scores(model, rows, "chosen_ids", cfg.batch_size, pad_id)
            rejected = reward_scores(model, rows, "rejected_ids", cfg.batch_size, pad_id)
        return [mean_metric("preference_accuracy", 100.0 * (chosen > rejected), None)]
    logps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for side in sides:
        with use(side) as model:
            log.info("%s: log-likelihood of %d chosen/rejected pairs", side, len(rows))
            logps[side] = (reply_logps(model, rows, "chosen_ids", cfg.batch_size, pad_id),
                           reply_logps(model, rows, "rejected_ids", cfg.batch_size, pad_id))
    wins = {side: 100.0 * (c > r) for side, (c, r) in logps.items()}
    out = [mean_metric("preference_accuracy", wins["tuned"], wins.get("base"))]
    if "base" in logps:
        (tc, tr), (bc, br) = logps["tuned"], logps["base"]
        out.append(mean_metric("implicit_reward_accuracy", 100.0 * ((tc - bc) > (tr - br)), None))
    return out
