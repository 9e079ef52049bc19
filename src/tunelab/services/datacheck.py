"""`tunelab data check` and the Data tab's Check: one function that reads every row of a dataset and reports
malformed rows (row number and why), empty and duplicate rows, train/validation overlap and, with a model, the
token length of every example through the real tokenizer and template with what the cutoff truncates or drops.

The tokenizer is loaded lazily (transformers, no model weights); the rest is pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.datacheck import duplicates, histogram_lines, length_summary, overlap
from tunelab.core.datafiles import Malformed, iter_rows
from tunelab.core.datasets import (
    MAX_REPORTED,
    DataError,
    DatasetReport,
    DatasetSpec,
    load_dataset_registry,
    validate_records,
)


@dataclass
class CheckResult:
    """Everything a check found; ``lines()`` is the CLI's text, the Data tab draws the same numbers."""

    name: str
    source: str
    spec: DatasetSpec
    report: DatasetReport
    empty: int = 0
    duplicates: int = 0
    validation: str | None = None
    validation_rows: int = 0
    overlap: int = 0
    cutoff: int = 1024
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    refused: list[str] = field(default_factory=list)
    measured_with: str = ""  # "template chatml, tokenizer of demo" when lengths were measured

    @property
    def ok(self) -> bool:
        """No malformed row."""
        return not self.report.problems

    def problem_text(self) -> str:
        """The malformed rows as one message naming the file, the format and every row (first MAX_REPORTED)."""
        try:
            self.report.raise_if_bad()
        except DataError as exc:
            return str(exc)
        return ""

    def summary(self) -> dict[str, Any]:
        """The findings as JSON-ready data (`tunelab data check --json`, which the Data tab runs)."""
        return {"name": self.name, "source": self.source, "format": self.spec.format, "ok": self.ok,
                "rows": self.report.rows, "problems": self.report.problems[:MAX_REPORTED],
                "more_problems": max(0, len(self.report.problems) - MAX_REPORTED), "lines": self.lines(histogram=False),
                "cutoff": self.cutoff, "lengths": self.lengths, "measured_with": self.measured_with}

    def lines(self, histogram: bool = True) -> list[str]:
        """The report as text lines (what `tunelab data check` prints; the Data tab draws the histogram instead)."""
        spec, report = self.spec, self.report
        valid = len(report.examples)
        state = "all valid" if self.ok else f"{len(report.problems)} malformed"
        out = [f"{self.name}: {report.rows} rows, format {spec.format} ({spec.note or 'from the registry'}), {state} ({self.source})"]
        out += [f"  {line} (format {spec.format} does not use it)" for line in report.ignored_lines()]
        out.append(f"  empty rows: {self.empty}; duplicates: {self.duplicates} row(s) repeat an earlier row exactly")
        if self.validation:
            out.append(f"  validation {self.validation}: {self.overlap} of {self.validation_rows} rows also in the training data")
        if not self.measured_with:
            out.append("  token lengths: give --model (e.g. --model demo) to measure them with a real tokenizer")
            return out
        out.append(f"  token lengths ({self.measured_with}) of {valid} valid row(s): {length_summary(self.lengths)}")
        out += ["   " + line for line in histogram_lines(self.lengths, self.cutoff)] if histogram else []
        out.append(f"  cutoff {self.cutoff}: {self.truncated} row(s) truncated, {self.dropped} dropped "
                   f"(nothing to train left), {len(self.refused)} refused by the template")
        out += [f"    {refusal}" for refusal in self.refused[:5]]
        return out


def _is_empty(record: Any) -> bool:
    if isinstance(record, Malformed):
        return False
    if isinstance(record, dict):
        return all(_is_empty(v) for v in record.values())
    if isinstance(record, (list, tuple)):
        return all(_is_empty(v) for v in record)
    return record is None or (isinstance(record, str) and not record.strip())


def _read(datasets: Any, name_or_path: str, format: str | None) -> tuple[str, DatasetSpec, str, DatasetReport, int]:
    """(name, spec, source, validation report, empty rows) of one local dataset."""
    name, spec, local = datasets.resolve(name_or_path, format)
    if local is None:
        raise DataError(f"dataset {name!r} is a hub dataset ({spec.hub}); it is checked when training loads it")
    if not local.exists():
        raise DataError(f"dataset {name!r}: file {local} does not exist")
    rows = list(iter_rows(local, spec.text_split))
    report = validate_records(name, spec, rows, str(local), base=local.parent)
    if report.rows == 0:
        report.problems.append("the file holds no rows")
    return name, spec, str(local), report, sum(_is_empty(record) for _, record in rows)


def check_dataset(
    dataset: str, *, format: str | None = None, dataset_dir: str | None = None, validation: str | None = None,
    model: str | None = None, template: str = "auto", cutoff: int = 1024,
) -> CheckResult:
    """Check one dataset (a registered name or a file path); DataError when it cannot be read at all."""
    if cutoff < 1:
        raise DataError(f"cutoff: {cutoff} is not a positive number of tokens")
    datasets = load_dataset_registry(dataset_dir)
    name, spec, source, report, empty = _read(datasets, dataset, format)
    result = CheckResult(name, source, spec, report, empty=empty, duplicates=duplicates(report.examples), cutoff=cutoff)
    if validation:
        vname, _, _, vreport, _ = _read(datasets, validation, format)
        vreport.raise_if_bad()
        result.validation, result.validation_rows = vname, len(vreport.examples)
        result.overlap = overlap(report.examples, vreport.examples)
    if model and report.examples:
        _measure(result, model, template)
    return result


def _measure(result: CheckResult, model: str, template: str) -> None:
    """Token lengths of the valid rows with the model's tokenizer and the chosen template."""
    from tunelab.core.schema import ConfigError
    from tunelab.core.template_choice import choose_template
    from tunelab.core.templates import UnknownTemplate
    from tunelab.engine.lengths import measure
    from tunelab.engine.model import load_tokenizer, local_dir, resolve_model_path

    fmt = result.spec.format
    try:
        path = resolve_model_path(model)
        tokenizer = load_tokenizer(path)
        choice = None if fmt == "text" else choose_template(template, model, local_dir(path))
    except (ConfigError, UnknownTemplate, OSError) as exc:
        raise DataError(f"model {model} / template {template}: {exc}") from None
    measured = measure(result.report.examples, fmt, tokenizer, choice, result.cutoff)
    result.lengths, result.truncated, result.dropped = measured.lengths, measured.truncated, measured.dropped
    result.refused = measured.refused[:MAX_REPORTED]
    result.measured_with = (f"template {choice.name}, " if choice else "") + f"tokenizer of {model}"
    if Path(result.source).is_file():  # kept for `tunelab estimate` and the Train tab's estimate of this file
        from tunelab.core.token_lengths import save_lengths

        save_lengths(Path(result.source), result.spec, model, template, measured.lengths)
