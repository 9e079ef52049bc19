"""The dataset registry (data/dataset_info.json) and row-by-row validation into canonical examples.

Canonical forms: ``{"messages": [...], "tools"?: [...]}`` for sft, ``{"text": ...}`` for pt,
``{"messages": [prompt], "chosen": str, "rejected": str}`` for paired preference stages (rm, dpo, orpo, simpo),
``{"messages": [prompt], "completion": str, "label": bool}`` for kto and ``{"messages": [prompt], "extra": {...}}``
(the row's other columns, handed to reward functions) for grpo; a prompt ends with a user turn. Bad rows are never
dropped silently: every problem is reported with the file, the row number (1-based) and what is wrong. A column the
format does not use is counted and reported; one that changes what is trained (labels, media, tools, chosen/rejected)
is refused. Registry entries may be written in tunelab's keys or in LLaMA-Factory's (core.llamafactory); a bad
entry is reported when it is used and listed by ``tunelab data list``, never blocking the others.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.core import llamafactory
from tunelab.core.converters import convert_row
from tunelab.core.datafiles import DataError, Malformed, iter_rows
from tunelab.core.dataguess import guess_file
from tunelab.core.media import IMAGES_COLUMN, convert_media_row
from tunelab.core.messages import MEDIA_COLUMNS, OPENAI_TAGS, SHAREGPT_TAGS, TAG_KEYS
from tunelab.core.paths import home_dir, resource_dir
from tunelab.core.stages import STAGES

__all__ = ["DataError", "DatasetRegistry", "DatasetReport", "DatasetSpec", "check_stage", "convert_row", "iter_rows",
           "load_dataset_registry", "validate_file", "validate_records", "Malformed", "iter_examples"]

Format = Literal["alpaca", "sharegpt", "openai", "text", "preference", "kto", "prompt"]
FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "openai", "text", "preference", "kto", "prompt")
STAGE_FORMATS = {name: info.formats for name, info in STAGES.items()}
DEFAULT_COLUMNS: dict[str, dict[str, str | None]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system", "history": "history"},
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools"},
    "text": {"text": "text"},
    "preference": {"prompt": "prompt", "query": None, "chosen": "chosen", "rejected": "rejected", "system": "system"},
    "kto": {"prompt": "prompt", "query": None, "completion": "completion", "label": "label", "system": "system",
            "messages": "messages"},
    "prompt": {"prompt": "prompt", "query": None, "system": "system"},
}
LEGACY_TAG_COLUMNS = ("role", "content", "user", "assistant")  # older registries put message keys in columns
# Columns that change what is trained: ignoring them would train something else than the file means.
MEANINGFUL = {
    "label": "use format kto (stage kto)", "kto_tag": "use format kto (stage kto)",
    "chosen": "use format preference (stages rm, dpo, orpo, simpo)",
    "rejected": "use format preference (stages rm, dpo, orpo, simpo)",
    "tools": "use format sharegpt or openai, whose conversations carry tool calls (stage sft)",
}
MAX_REPORTED = 20


class DatasetSpec(BaseModel):
    """One entry of dataset_info.json."""

    model_config = ConfigDict(extra="forbid")

    file: str | None = None
    hub: str | None = None
    subset: str | None = None
    split: str = "train"
    folder: str | None = None  # hub: the data folder inside the repository
    format: Format = "alpaca"
    columns: dict[str, str] = {}
    tags: dict[str, str] = {}  # message keys: role, content, user, assistant, system, observation, function
    num_samples: int | None = Field(None, ge=1)
    text_split: Literal["auto", "line", "paragraph"] = "auto"  # .txt: one document per line or per blank-line block
    description: str = ""
    note: str = Field("", exclude=True)  # how the format was chosen (shown when a check fails)

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        if (self.file is None) == (self.hub is None):
            raise ValueError("give exactly one of 'file' or 'hub'")
        valid = set(DEFAULT_COLUMNS[self.format]) | (set(LEGACY_TAG_COLUMNS) if self.format in ("sharegpt", "openai") else set())
        unknown = set(self.columns) - valid
        if unknown:
            raise ValueError(f"columns: unknown keys {sorted(unknown)} for format {self.format!r}; valid: {sorted(valid)}")
        if set(self.tags) - set(TAG_KEYS):
            raise ValueError(f"tags: unknown keys {sorted(set(self.tags) - set(TAG_KEYS))}; valid: {list(TAG_KEYS)}")
        return self

    def column(self, key: str) -> str | None:
        """The file's column name for a canonical key (None: the format has no such column by default)."""
        return self.columns.get(key, DEFAULT_COLUMNS[self.format].get(key))

    def tags_(self) -> dict[str, str]:
        """The keys and role names of this dataset's messages."""
        defaults = SHAREGPT_TAGS if self.format == "sharegpt" else OPENAI_TAGS
        legacy = {k: self.columns[k] for k in LEGACY_TAG_COLUMNS if k in self.columns}
        return {**defaults, **legacy, **self.tags}

    def used_columns(self) -> set[str] | None:
        """The columns the format reads (None: every column, as grpo prompts hand the rest to reward functions)."""
        if self.format == "prompt":
            return None
        keys = set(DEFAULT_COLUMNS[self.format])
        return {c for c in (self.column(k) for k in keys) if c}


@dataclass
class DatasetReport:
    """What validation found: canonical examples, per-row problems and the columns nothing used."""

    name: str
    source: str
    format: str
    note: str = ""
    rows: int = 0
    valid: int = 0  # examples that convert (kept in ``examples`` unless validated with keep=False), after num_samples
    examples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)  # column -> rows that had it

    def raise_if_bad(self) -> None:
        """Raise DataError listing the problems (the first MAX_REPORTED of them)."""
        if not self.problems:
            return
        shown = self.problems[:MAX_REPORTED]
        more = len(self.problems) - len(shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        how = f" ({self.note})" if self.note else ""
        raise DataError(f"{self.source}: {len(self.problems)} problem(s), read as format {self.format!r}{how}:\n  "
                        + "\n  ".join(shown) + tail)

    def ignored_lines(self) -> list[str]:
        """One line per ignored column: "column 'id' ignored in 300 rows"."""
        return [f"column {c!r} ignored in {n} row(s)" for c, n in sorted(self.ignored.items())]


@dataclass(frozen=True)
class DatasetRegistry:
    """dataset_info.json: dataset names mapped to specs; file paths resolve relative to the registry file they come
    from (the shipped data/ or, for the user's own datasets, $TUNELAB_HOME/datasets)."""

    path: Path
    specs: dict[str, DatasetSpec]
    errors: dict[str, str] = field(default_factory=dict)  # entries that could not be read, and why
    user: dict[str, Path] = field(default_factory=dict)  # the user's datasets -> their registry file
    notes: list[str] = field(default_factory=list)  # what the merge of the user's registry left out, and why

    def origin(self, name: str) -> Path:
        """The registry file that defines ``name``."""
        return self.user.get(name, self.path)

    def resolve(self, name_or_path: str, format: str | None = None) -> tuple[str, DatasetSpec, Path | None]:
        """(name, spec, local file or None for hub datasets) for a registry name or a file path."""
        if name_or_path in self.errors:
            raise DataError(f"{self.origin(name_or_path)}: dataset {name_or_path!r}: {self.errors[name_or_path]}")
        if name_or_path in self.specs:
            spec = self.specs[name_or_path]
            if format:
                spec = spec.model_copy(update={"format": format, "note": "format given on the command line"})
            local = (self.origin(name_or_path).parent / spec.file).resolve() if spec.file else None
            return name_or_path, spec, local
        candidate = Path(name_or_path).expanduser()
        if candidate.is_file() or candidate.is_dir():
            if format:
                spec = DatasetSpec(file=str(candidate), format=format, note="format given on the command line")  # type: ignore[arg-type,call-arg]  # pydantic checks it
            else:
                guess = guess_file(candidate)
                spec = DatasetSpec(file=str(candidate), format=guess.format, columns=guess.columns, note=guess.reason())  # type: ignore[arg-type,call-arg]
            return candidate.name, spec, candidate.resolve()
        names = ", ".join(sorted(self.specs))
        where = f"{self.path}" + (" or your datasets" if self.user else "")
        raise DataError(f"dataset {name_or_path!r}: not in {where} and not a file; registered: {names}")


def user_registry_file() -> Path:
    """The user's own dataset registry: $TUNELAB_HOME/datasets/dataset_info.json."""
    return home_dir() / "datasets" / "dataset_info.json"


def load_dataset_registry(path: str | Path | None = None) -> DatasetRegistry:
    """Load dataset_info.json from a folder or file; by default the shipped data/ merged with the user's datasets
    ($TUNELAB_HOME/datasets), where a user entry never shadows a shipped name (it is left out, with a note)."""
    if path:
        return read_registry(Path(path))
    shipped = read_registry(resource_dir("data"))
    user_file = user_registry_file()
    if not user_file.is_file():
        return shipped
    try:
        mine = read_registry(user_file)
    except DataError as exc:  # a broken user registry never hides the shipped datasets
        return DatasetRegistry(shipped.path, shipped.specs, shipped.errors, notes=[str(exc)])
    specs, errors, user, notes = dict(shipped.specs), dict(shipped.errors), {}, []
    for name in [*mine.specs, *mine.errors]:
        if name in specs or name in errors:
            notes.append(f"{user_file}: {name!r} is also a shipped dataset; the shipped one is used "
                         f"(rename yours: tunelab data rename {name} NEW_NAME)")
            continue
        user[name] = mine.path
        if name in mine.specs:
            specs[name] = mine.specs[name].model_copy(update={"note": "format from your registry"})
        else:
            errors[name] = mine.errors[name]
    return DatasetRegistry(shipped.path, specs, errors, user, notes)


def read_registry(path: Path) -> DatasetRegistry:
    """One dataset_info.json (a folder holding it, or the file); DataError when it cannot be read at all."""
    if path.is_dir():
        path = path / "dataset_info.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no dataset registry here") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object mapping dataset names to entries, got {type(raw).__name__}")
    specs, errors = {}, {}
    for name, entry in raw.items():
        try:
            specs[name] = parse_entry(entry)
        except ValueError as exc:
            errors[name] = str(exc)
    return DatasetRegistry(path.resolve(), specs, errors)


def parse_entry(entry: Any) -> DatasetSpec:
    """One registry entry (tunelab or LLaMA-Factory keys) as a spec; ValueError with a one-line reason."""
    if not isinstance(entry, dict):
        raise ValueError(f"an entry must be an object, got {type(entry).__name__}")
    origin = "LLaMA-Factory keys" if llamafactory.is_llamafactory(entry) else "dataset_info.json"
    if origin != "dataset_info.json":
        entry = llamafactory.to_spec(entry)
    try:
        return DatasetSpec.model_validate({**entry, "note": f"format from {origin}"})
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())) from None


def validate_file(name: str, spec: DatasetSpec, path: Path, keep: bool = True) -> DatasetReport:
    """Read and validate every row of a local dataset file (or folder of files); ``keep=False`` counts the
    examples without holding them (a second pass streams them with iter_examples)."""
    if not path.exists():
        raise DataError(f"dataset {name!r}: file {path} does not exist")
    report = validate_records(name, spec, iter_rows(path, spec.text_split), str(path), base=path.parent, keep=keep)
    if report.rows == 0:
        report.problems.append("the file holds no rows")
    return report


def validate_records(name: str, spec: DatasetSpec, records: Any, source: str, base: Path | None = None,
                     keep: bool = True) -> DatasetReport:
    """Validate rows (an iterable of records or of (number, record) pairs from iter_rows); image paths resolve
    against ``base`` (the dataset file's folder)."""
    report = DatasetReport(name=name, source=source, format=spec.format, note=spec.note)
    used = spec.used_columns()
    seen: Counter[str] = Counter()
    for number, record in _numbered(records):
        report.rows += 1
        if isinstance(record, dict) and used is not None:
            seen.update(str(k) for k in record if k not in used and record[k] not in (None, "", []))
        elif isinstance(record, dict):
            seen.update(str(k) for k in record if k in MEDIA_COLUMNS and record[k] not in (None, "", []))
        try:
            example = convert_media_row(record, spec, base)
        except ValueError as exc:
            report.problems.append(f"row {number}: {exc}")
            continue
        report.valid += 1
        if keep:
            report.examples.append(example)
    if spec.format in CHAT_FORMATS:  # chat rows carry images into vision-language sft (core/media.py)
        seen.pop(IMAGES_COLUMN, None)
    _judge_columns(report, spec, seen)
    keep_indices = sample_indices(report.valid, spec.num_samples)
    if keep_indices is not None:
        report.valid = len(keep_indices)
        report.examples = [report.examples[i] for i in keep_indices] if keep else []
    return report


def sample_indices(count: int, num_samples: int | None) -> list[int] | None:
    """The sorted indices of the examples a dataset's ``num_samples`` keeps (None: all of them)."""
    if not num_samples or num_samples >= count:
        return None
    return sorted(random.Random(0).sample(range(count), num_samples))


def iter_examples(spec: DatasetSpec, rows: Callable[[], Iterable[Any]], base: Path | None = None) -> Iterator[dict[str, Any]]:
    """The canonical examples of already validated rows, one at a time, sampled as validate_records samples them
    (``rows()`` reads the records from the start; rows that do not convert are skipped: a check reported them).
    With num_samples the rows are read twice: once to count them, once to pick."""
    if not spec.num_samples:
        yield from _converted(spec, rows(), base)
        return
    keep = sample_indices(sum(1 for _ in _converted(spec, rows(), base)), spec.num_samples)
    picked = set(keep) if keep is not None else None
    for index, example in enumerate(_converted(spec, rows(), base)):
        if picked is None or index in picked:
            yield example


def _converted(spec: DatasetSpec, records: Any, base: Path | None) -> Iterator[dict[str, Any]]:
    for _, record in _numbered(records):
        try:
            yield convert_media_row(record, spec, base)
        except ValueError:
            continue


def _numbered(records: Any):
    for index, item in enumerate(records, 1):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int):
            yield item
        else:
            yield index, item


CHAT_FORMATS = ("alpaca", "sharegpt", "openai")


def _judge_columns(report: DatasetReport, spec: DatasetSpec, seen: Counter[str]) -> None:
    """Refuse unused columns that change what is trained; count the others as ignored."""
    for column, count in sorted(seen.items()):
        if column in MEDIA_COLUMNS or column in ("image", "video", "audio"):
            report.problems.insert(0, f"column {column!r} ({count} rows) holds media: multimodal training is not "
                                      "supported yet; remove the column to train on the text alone")
        elif column in MEANINGFUL:
            report.problems.insert(0, f"column {column!r} ({count} rows) changes what is trained but format "
                                      f"{spec.format!r} does not use it; {MEANINGFUL[column]}, or remove the column")
        else:
            report.ignored[column] = count


def check_stage(name: str, spec: DatasetSpec, stage: str) -> None:
    """Raise DataError when a dataset's format does not fit the training stage."""
    allowed = STAGE_FORMATS[stage]
    if spec.format not in allowed:
        raise DataError(
            f"dataset {name!r} has format {spec.format!r}, which stage {stage!r} cannot use; "
            f"{stage} needs: {', '.join(allowed)}"
        )
