"""Assemble the training (and validation) datasets of a run: registry -> validated rows -> tokens, cached.

Tokenized datasets are cached under $TUNELAB_HOME/cache/tokenized/<key>. The key hashes the dataset files'
bytes (not their rows), their registry entries, the tokenizer, the template source and every option that
changes the tokens, so a cache hit costs one read of each file. Stages whose rows are token ids alone (pt,
sft: ``STREAMS = True``) are validated in one pass that keeps no example and tokenized in a second that
streams them through engine.prepare, in several processes, into Arrow shards: memory does not grow with the
dataset. The other stages hold their (usually small) preference or prompt sets in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.core.chat_render import template_date
from tunelab.core.config import RunConfig
from tunelab.core.datafiles import dataset_files
from tunelab.core.datasets import (
    DataError,
    DatasetReport,
    DatasetSpec,
    check_stage,
    iter_examples,
    iter_rows,
    load_dataset_registry,
    validate_file,
    validate_records,
)
from tunelab.core.files import hash_file
from tunelab.core.paths import home_dir
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.prepare import EncodeJob, Progress, encode_stream, worker_count
from tunelab.engine.tokenize import EncodeStats, tokenizer_fingerprint

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # bump when encoding changes what it writes for the same inputs


@dataclass
class PreparedData:
    """Tokenized train/eval datasets and what preprocessing did."""

    train: Any
    eval: Any | None
    stats: EncodeStats


@dataclass
class Source:
    """One configured dataset: its name, registry entry and where its rows come from."""

    name: str
    spec: DatasetSpec
    path: Path | None  # a local file or folder; None for a hub dataset
    hub: Any = None  # the loaded hub dataset (Arrow-backed, iterated row by row)

    @property
    def label(self) -> str:
        """The file, or hub:<id>, as messages name it."""
        return str(self.path) if self.path is not None else f"hub:{self.spec.hub}"

    def rows(self) -> Iterable[Any]:
        """The raw records from the start, (number, record) pairs for files."""
        if self.path is not None:
            return iter_rows(self.path, self.spec.text_split)
        return self.hub

    def validate(self, keep: bool) -> DatasetReport:
        """Every row checked; ``keep``: hold the canonical examples too."""
        if self.path is not None:
            report = validate_file(self.name, self.spec, self.path, keep=keep)
        else:
            report = validate_records(self.name, self.spec, self.rows(), self.label, keep=keep)
        report.raise_if_bad()
        for line in report.ignored_lines():
            log.warning("dataset %s: %s (format %s does not use it)", self.name, line, self.spec.format)
        return report

    def examples(self, limit: int | None) -> Iterator[dict]:
        """The validated canonical examples, read again one at a time (at most ``limit``)."""
        base = self.path.parent if self.path is not None else None
        for number, example in enumerate(iter_examples(self.spec, self.rows, base)):
            if limit and number >= limit:
                return
            yield example

    def digest(self) -> str:
        """A hash of the data's bytes: the file (or the folder's dataset files), or the hub dataset's fingerprint."""
        if self.path is None:
            return f"hub:{getattr(self.hub, '_fingerprint', None)}"
        files = dataset_files(self.path) if self.path.is_dir() else [self.path]
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0")
            hash_file(digest, file)
        return digest.hexdigest()


def load_sources(config: RunConfig) -> list[Source]:
    """The run's datasets, resolved in the registry and checked against the stage (hub ones loaded)."""
    datasets = load_dataset_registry(config.dataset_dir)
    sources = []
    for name in config.dataset:
        name, spec, local = datasets.resolve(name)
        check_stage(name, spec, config.stage)
        sources.append(Source(name, spec, local, None if local is not None else _hub_dataset(spec)))
    return sources


def load_reports(config: RunConfig, sources: list[Source] | None = None) -> list[DatasetReport]:
    """Validate every configured dataset (or ``sources``, already loaded), examples held, at most max_samples
    each; DataError on any malformed row or unfit format."""
    reports = []
    for source in load_sources(config) if sources is None else sources:
        report = source.validate(keep=True)
        if config.max_samples:
            report.examples = report.examples[: config.max_samples]
        reports.append(report)
    return reports


def _hub_dataset(spec: DatasetSpec) -> Any:
    import datasets as hf_datasets

    try:
        return hf_datasets.load_dataset(spec.hub, spec.subset, split=spec.split, data_dir=spec.folder)
    except Exception as exc:  # offline, missing, gated: say so plainly
        raise DataError(f"dataset {spec.hub!r} could not be loaded from the Hugging Face hub: {exc}") from None


def cache_key(config: RunConfig, sources: list[Source], tokenizer: Any, choice: TemplateChoice | None) -> str:
    """The tokenized cache's name: data bytes, registry entries, tokenizer, template and encoding options."""
    payload = {
        "data": [[s.digest(), s.spec.model_dump(mode="json", exclude={"file", "description"})] for s in sources],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": [choice.template.source, template_date().isoformat()] if choice else None,
        "tokens": [choice.entry.bos_token, choice.entry.eos_token] if choice and choice.entry else None,
        "options": [config.stage, config.cutoff_len, config.train_on_prompt, config.mask_history, config.system_prompt,
                    config.max_samples, CACHE_VERSION],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def tokenize_reports(
    config: RunConfig, reports: list[DatasetReport], tokenizer: Any, choice: TemplateChoice | None
) -> tuple[list[dict], EncodeStats]:
    """Tokenize validated examples the way the run's stage trains them, in memory (no caching)."""
    from tunelab.engine.stages import get_stage

    stats = EncodeStats()
    examples = [example for report in reports for example in report.examples]
    rows = get_stage(config.stage).encode(config, examples, tokenizer, choice, stats)
    return rows, stats


def streams(config: RunConfig, tokenizer: Any) -> bool:
    """Whether the run's data is tokenized by streaming (token-id rows, a text tokenizer)."""
    from tunelab.engine.stages import get_stage
    from tunelab.engine.vlm import is_processor

    return bool(getattr(get_stage(config.stage), "STREAMS", False)) and not is_processor(tokenizer)


def prepare_data(
    config: RunConfig, tokenizer: Any, choice: TemplateChoice | None, progress: Progress | None = None
) -> PreparedData:
    """Validated, tokenized, cached datasets, split into train and eval by val_size; ``progress(done, total)``
    is called while examples are tokenized."""
    sources = load_sources(config)
    cache = home_dir() / "cache" / "tokenized" / cache_key(config, sources, tokenizer, choice)
    if (cache / "stats.json").is_file():
        dataset = _load_cache(cache)
        stats = EncodeStats(**json.loads((cache / "stats.json").read_text()))
        log.info("tokenized data from cache %s", cache)
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=cache.name + ".", suffix=".tmp", dir=cache.parent))
        try:
            if streams(config, tokenizer):
                stats = _encode_streaming(config, sources, tokenizer, choice, work, progress)
            else:
                stats = _encode_in_memory(config, sources, tokenizer, choice, work)
            (work / "stats.json").write_text(json.dumps(stats.as_event() | {"refusals": stats.refusals}))
            _publish(work, cache)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        dataset = _load_cache(cache)
    return PreparedData(*_split(config, dataset), stats)


def _encode_streaming(config: RunConfig, sources: list[Source], tokenizer: Any, choice: TemplateChoice | None,
                      work: Path, progress: Progress | None) -> EncodeStats:
    reports = [source.validate(keep=False) for source in sources]
    limit = config.max_samples
    total = sum(min(r.valid, limit) if limit else r.valid for r in reports)
    examples = (example for source in sources for example in source.examples(limit))
    (work / "shards").mkdir()
    workers = worker_count(config.preprocessing_num_workers, total)
    log.info("tokenizing %d examples in %d process(es)", total, workers)
    result = encode_stream(EncodeJob(config, tokenizer, choice), examples, total=total, out_dir=work / "shards",
                           workers=workers, progress=progress)
    _check_kept(config, result.stats, reports)
    return result.stats


def _encode_in_memory(config: RunConfig, sources: list[Source], tokenizer: Any, choice: TemplateChoice | None,
                      work: Path) -> EncodeStats:
    import datasets as hf_datasets

    reports = load_reports(config, sources)
    rows, stats = tokenize_reports(config, reports, tokenizer, choice)
    _check_kept(config, stats, reports)
    hf_datasets.Dataset.from_list(rows).save_to_disk(str(work / "data"))
    return stats


def _check_kept(config: RunConfig, stats: EncodeStats, reports: list[DatasetReport]) -> None:
    """Record the ignored columns; DataError when tokenization left no example."""
    for report in reports:
        for column, count in report.ignored.items():
            stats.ignored_columns[f"{report.name}:{column}"] = count
    if not stats.kept:
        raise DataError(
            f"no example left after tokenization (cutoff_len={config.cutoff_len}): "
            f"{stats.dropped_too_long} too long, {stats.dropped_refused} refused by the template"
            + (f" ({stats.refusals[0]})" if stats.refusals else "")
        )


def _publish(work: Path, cache: Path) -> None:
    """Move a finished cache into place (a concurrent run that finished first wins; both hold the same data)."""
    try:
        work.rename(cache)
    except OSError:
        if not (cache / "stats.json").is_file():
            raise


def _load_cache(cache: Path) -> Any:
    import datasets as hf_datasets

    if (cache / "shards").is_dir():
        shards = sorted((cache / "shards").glob("shard-*.arrow"))  # (datasets adds its split indices here)
        return hf_datasets.concatenate_datasets([hf_datasets.Dataset.from_file(str(s)) for s in shards])
    return hf_datasets.load_from_disk(str(cache / "data"))


def _split(config: RunConfig, dataset: Any) -> tuple[Any, Any | None]:
    if config.val_size <= 0:
        return dataset, None
    size = int(config.val_size) if config.val_size >= 1 else config.val_size
    if isinstance(size, int) and size >= len(dataset):
        raise DataError(f"val_size: {config.val_size} leaves no training examples (only {len(dataset)} examples)")
    split = dataset.train_test_split(test_size=size, seed=config.seed)
    return split["train"], split["test"]
