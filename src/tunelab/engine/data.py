"""Assemble the training (and validation) datasets of a run: registry -> validated rows -> tokens, cached.

Tokenized datasets are cached under $TUNELAB_HOME/cache/tokenized/<hash>, keyed by the data's content, the
tokenizer, the template source and every option that changes the tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.datasets import (
    DataError,
    DatasetReport,
    check_stage,
    load_dataset_registry,
    validate_file,
    validate_records,
)
from tunelab.core.paths import home_dir
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.tokenize import EncodeStats, tokenizer_fingerprint

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Tokenized train/eval datasets and what preprocessing did."""

    train: Any
    eval: Any | None
    stats: EncodeStats


def load_reports(config: RunConfig) -> list[DatasetReport]:
    """Validate every configured dataset; DataError on any malformed row or unfit format."""
    datasets = load_dataset_registry(config.dataset_dir)
    reports = []
    for name in config.dataset:
        name, spec, local = datasets.resolve(name)
        check_stage(name, spec, config.stage)
        if local is not None:
            report = validate_file(name, spec, local)
        else:
            report = validate_records(name, spec, _hub_rows(spec), f"hub:{spec.hub}")
        report.raise_if_bad()
        for line in report.ignored_lines():
            log.warning("dataset %s: %s (format %s does not use it)", name, line, spec.format)
        if config.max_samples:
            report.examples = report.examples[: config.max_samples]
        reports.append(report)
    return reports


def _hub_rows(spec: Any) -> list[dict]:
    import datasets as hf_datasets

    try:
        loaded = hf_datasets.load_dataset(spec.hub, spec.subset, split=spec.split, data_dir=spec.folder)
    except Exception as exc:  # offline, missing, gated: say so plainly
        raise DataError(f"dataset {spec.hub!r} could not be loaded from the Hugging Face hub: {exc}") from None
    return list(loaded)


def _cache_key(config: RunConfig, reports: list[DatasetReport], tokenizer: Any, choice: TemplateChoice | None) -> str:
    payload = {
        "examples": [hashlib.sha256(json.dumps(r.examples, sort_keys=True).encode()).hexdigest() for r in reports],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": choice.template.source if choice else None,
        "tokens": [choice.entry.bos_token, choice.entry.eos_token] if choice and choice.entry else None,
        "options": [config.stage, config.cutoff_len, config.train_on_prompt, config.mask_history, config.system_prompt, 2],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def tokenize_reports(
    config: RunConfig, reports: list[DatasetReport], tokenizer: Any, choice: TemplateChoice | None
) -> tuple[list[dict], EncodeStats]:
    """Tokenize validated examples the way the run's stage trains them (no caching)."""
    from tunelab.engine.stages import get_stage

    stats = EncodeStats()
    examples = [example for report in reports for example in report.examples]
    rows = get_stage(config.stage).encode(config, examples, tokenizer, choice, stats)
    return rows, stats


def prepare_data(config: RunConfig, tokenizer: Any, choice: TemplateChoice | None) -> PreparedData:
    """Validated, tokenized, cached datasets, split into train and eval by val_size."""
    import datasets as hf_datasets

    reports = load_reports(config)
    cache = home_dir() / "cache" / "tokenized" / _cache_key(config, reports, tokenizer, choice)
    if (cache / "stats.json").is_file():
        dataset = hf_datasets.load_from_disk(str(cache / "data"))
        stats = EncodeStats(**json.loads((cache / "stats.json").read_text()))
        log.info("tokenized data from cache %s", cache)
    else:
        rows, stats = tokenize_reports(config, reports, tokenizer, choice)
        for report in reports:
            for column, count in report.ignored.items():
                stats.ignored_columns[f"{report.name}:{column}"] = count
        if not rows:
            raise DataError(
                f"no example left after tokenization (cutoff_len={config.cutoff_len}): "
                f"{stats.dropped_too_long} too long, {stats.dropped_refused} refused by the template"
                + (f" ({stats.refusals[0]})" if stats.refusals else "")
            )
        dataset = hf_datasets.Dataset.from_list(rows)
        _save_cache(cache, dataset, stats)
    eval_dataset = None
    if config.val_size > 0:
        size = int(config.val_size) if config.val_size >= 1 else config.val_size
        if isinstance(size, int) and size >= len(dataset):
            raise DataError(f"val_size: {config.val_size} leaves no training examples (only {len(dataset)} examples)")
        split = dataset.train_test_split(test_size=size, seed=config.seed)
        dataset, eval_dataset = split["train"], split["test"]
    return PreparedData(dataset, eval_dataset, stats)


def _save_cache(cache: Path, dataset: Any, stats: EncodeStats) -> None:
    tmp = cache.with_name(cache.name + ".tmp")
    try:
        dataset.save_to_disk(str(tmp / "data"))
        (tmp / "stats.json").write_text(json.dumps(stats.as_event() | {"refusals": stats.refusals}))
        if cache.exists():
            return
        tmp.rename(cache)
    except OSError as exc:
        log.warning("could not cache tokenized data in %s: %s", cache, exc)
