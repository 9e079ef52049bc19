"""Evaluation data and model passes: tokenized rows (the exact rows training uses, masks included), per-example
token loss, and greedy generation for the prompts of those rows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.core.config import RunConfig
from tunelab.core.datasets import DataError, load_dataset_registry
from tunelab.core.eval_config import EvalConfig
from tunelab.core.sources import ModelSource
from tunelab.core.template_choice import TemplateChoice

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class EvalRows:
    """Tokenized examples (input_ids, labels) and where they came from."""

    rows: list[dict[str, list[int]]]
    description: str
    stage: str
    chats: dict[str, list[dict]] = field(default_factory=dict)  # rendered prompt -> its conversation's messages


def _stage_for(datasets: list[str], dataset_dir: str | None) -> str:
    registry = load_dataset_registry(dataset_dir)
    formats = {registry.resolve(name)[1].format for name in datasets}
    return "pt" if formats == {"text"} else "sft"


def eval_run_config(cfg: EvalConfig, source: ModelSource) -> tuple[RunConfig, bool]:
    """The RunConfig whose data pipeline yields the eval rows, and whether to take its validation split."""
    base = source.run_config
    update: dict[str, Any] = {"packing": False}
    if cfg.cutoff_len:
        update["cutoff_len"] = cfg.cutoff_len
    if cfg.dataset:
        dataset_dir = cfg.dataset_dir or (base.dataset_dir if base else None)
        update.update(dataset=cfg.dataset, dataset_dir=dataset_dir, val_size=0.0, max_samples=cfg.max_samples)
        if base is None or base.stage != "sft" or _stage_for(cfg.dataset, dataset_dir) == "pt":
            update["stage"] = _stage_for(cfg.dataset, dataset_dir)
        if base is None:
            return RunConfig(model=source.model, template=source.template, **update), False
        return base.model_copy(update=update), False
    assert base is not None, "EvalConfig requires a dataset unless a run is given"
    if base.stage not in ("pt", "sft"):
        raise DataError(
            f"metrics: loss/predict score chat or text data; a stage {base.stage!r} run trains on other data: "
            f"use metrics={'reward (prompts)' if base.stage in ('grpo', 'rloo') else 'preference (pairs)'} or give "
            "dataset=... (an sft or text dataset)"
        )
    return base.model_copy(update=update), base.val_size > 0


def load_rows(cfg: EvalConfig, source: ModelSource, tokenizer: Any, choice: TemplateChoice | None) -> EvalRows:
    """Tokenized evaluation rows: the named datasets, else the run's validation split (else its training data)."""
    from tunelab.engine.data import prepare_data

    run_config, validation = eval_run_config(cfg, source)
    data = prepare_data(run_config, tokenizer, choice if run_config.stage != "pt" else None)
    rows, what = pick_rows(cfg, data, validation, run_config.val_size, "evaluation examples")
    chats = prompt_conversations(run_config, choice) if "predict" in cfg.metrics else {}
    return EvalRows([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows], what, run_config.stage, chats)


def prompt_conversations(run_config: RunConfig, choice: TemplateChoice | None) -> dict[str, list[dict]]:
    """The rendered prompt of each example (its text before the last reply) -> the messages before that reply, so
    predictions show as a conversation, not as template text. A prompt cut by cutoff_len matches nothing."""
    from tunelab.engine.data import load_reports
    from tunelab.engine.stages.sft import with_system
    from tunelab.engine.tokenize import render_with_spans

    if run_config.stage != "sft" or choice is None:
        return {}
    chats: dict[str, list[dict]] = {}
    for report in load_reports(run_config):
        for example in report.examples:
            messages = with_system(example["messages"], run_config.system_prompt)
            try:
                rendered = render_with_spans(choice.template, messages, choice.entry, example.get("tools"))
            except Exception:  # a conversation the template refuses has no evaluation row either
                continue
            if rendered.spans:
                chats.setdefault(rendered.text[: rendered.spans[-1][0]], messages[:-1])
    return chats


def pick_rows(cfg: EvalConfig, data: Any, validation: bool, val_size: float, kind: str) -> tuple[list[dict], str]:
    """The rows to score and where they come from: the named datasets, else the run's validation split, else its
    training rows (said so: that measures fit); at most ``max_samples``; DataError naming ``kind`` when none."""
    if cfg.dataset:
        rows, what = data.train, f"dataset {', '.join(cfg.dataset)}"
    elif validation:
        rows, what = data.eval, f"the run's validation split (val_size={val_size})"
    else:
        rows, what = data.train, "the run's training data (it has no validation split, val_size=0: this measures fit, not generalization)"
    rows = list(rows)[: cfg.max_samples] if cfg.max_samples else list(rows)
    if not rows:
        raise DataError(f"no {kind} in {what}")
    return rows, what


def example_losses(model: Any, rows: list[dict[str, list[int]]], batch_size: int, pad_id: int) -> np.ndarray:
    """Per-example (summed token NLL, scored tokens) over the rows' labelled tokens."""
    import torch

    out = np.zeros((len(rows), 2), dtype=np.float64)
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            n = len(row["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        targets = labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view(targets.shape)
        out[start : start + len(batch), 0] = nll.sum(dim=1).double().cpu().numpy()
        out[start : start + len(batch), 1] = (targets != IGNORE).sum(dim=1).cpu().numpy()
    return out


def prompt_and_reference(row: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    """Split a row at its last trained span: the tokens before it (the prompt) and the span (the reference)."""
    labels = row["labels"]
    end = max((i for i, label in enumerate(labels) if label != IGNORE), default=-1)
    if end < 0:
        raise DataError("an evaluation example has no trained tokens to use as a reference")
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return row["input_ids"][:start], row["input_ids"][start : end + 1]


def cut_at_stops(text: str, stops: list[str]) -> str:
    """The text up to the first stop string."""
    cut = len(text)
    for stop in stops:
        if stop and stop in text:
            cut = min(cut, text.index(stop))
    return text[:cut].strip()


def decode_reference(tokenizer: Any, ids: list[int], stops: list[str]) -> str:
    """A reference reply as text, without its end-of-turn."""
    return cut_at_stops(tokenizer.decode(ids, skip_special_tokens=False), stops)


def generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int, eos_ids: list[int],
    stops: list[str], progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy replies for tokenized prompts (left-padded batches), cut at the template's stop strings; ``progress``
    hears (done, total) before each batch and at the end."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = next(model.parameters()).device
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        if progress is not None:
            progress(start, len(prompts))
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, prompt in enumerate(batch):
            ids[i, width - len(prompt) :], mask[i, width - len(prompt) :] = torch.tensor(prompt), 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=eos_ids, pad_token_id=pad,
            )
        replies += [decode_reply(tokenizer, row, stops) for row in out[:, width:].tolist()]
    if progress is not None:
        progress(len(prompts), len(prompts))
    return replies


def decode_reply(tokenizer: Any, ids: list[int], stops: list[str]) -> str:
    """Generated token ids as a reply: decoded with special tokens, cut at the first stop (or pad/eos) string."""
    specials = [t for t in (tokenizer.pad_token, tokenizer.eos_token) if t]
    return cut_at_stops(tokenizer.decode(ids, skip_special_tokens=False), stops + specials)
