"""`tunelab data check|list`: validate datasets, measure their token lengths, list the registry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunelab.core.datacheck import duplicates, histogram_lines, length_summary, overlap
from tunelab.core.datasets import FORMATS, DataError, DatasetReport, load_dataset_registry, validate_file


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    group = commands.add_parser("data", help="check and list datasets")
    sub = group.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate every row of a dataset (exit 1 on any malformed row)")
    check.add_argument("dataset", help="a name from dataset_info.json or a file path")
    check.add_argument("--format", choices=FORMATS, help="the file's format (default: registry entry, else guessed)")
    check.add_argument("--dataset-dir", help="folder holding dataset_info.json (default: the shipped data/)")
    check.add_argument("--validation", help="a validation dataset (name or path) to check for overlap with this one")
    check.add_argument("--model", help="measure token lengths with this model's tokenizer (a folder, hub id or 'demo')")
    check.add_argument("--template", default="auto", help="chat template for the lengths (default: auto)")
    check.add_argument("--cutoff", type=int, default=1024, help="cutoff_len to count truncated/dropped rows (1024)")
    check.set_defaults(handler=_check)
    listing = sub.add_parser("list", help="list registered datasets (and the entries that cannot be used)")
    listing.add_argument("--dataset-dir")
    listing.set_defaults(handler=_list)


def _report(name: str, spec, local, what: str) -> DatasetReport:
    if local is None:
        raise DataError(f"{name!r} is a hub dataset ({spec.hub}); it is checked when training loads it")
    return validate_file(name, spec, local)


def _check(args: argparse.Namespace) -> int:
    try:
        datasets = load_dataset_registry(args.dataset_dir)
        name, spec, local = datasets.resolve(args.dataset, args.format)
        report = _report(name, spec, local, "dataset")
        report.raise_if_bad()
        print(f"{name}: {report.rows} rows, format {spec.format} ({spec.note}), all valid ({local})")
        for line in report.ignored_lines():
            print(f"  {line} (format {spec.format} does not use it)")
        dupes = duplicates(report.examples)
        print(f"  duplicates: {dupes} row(s) repeat an earlier row exactly")
        if args.validation:
            vname, vspec, vlocal = datasets.resolve(args.validation, args.format)
            valid = _report(vname, vspec, vlocal, "validation")
            valid.raise_if_bad()
            print(f"  validation {vname}: {overlap(report.examples, valid.examples)} of {len(valid.examples)} rows also in the training data")
        if args.model:
            _lengths(report, args)
        else:
            print("  token lengths: give --model (e.g. --model demo) to measure them with a real tokenizer")
    except DataError as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 1
    return 0


def _lengths(report: DatasetReport, args: argparse.Namespace) -> None:
    """Print the token-length histogram with the cutoff, and what the cutoff truncates or drops."""
    from tunelab.core.schema import ConfigError
    from tunelab.core.template_choice import choose_template
    from tunelab.core.templates import UnknownTemplate
    from tunelab.engine.lengths import measure
    from tunelab.engine.model import load_tokenizer, local_dir, resolve_model_path

    try:
        path = resolve_model_path(args.model)
        tokenizer = load_tokenizer(path)
        choice = None if report.format == "text" else choose_template(args.template, args.model, local_dir(path))
    except (ConfigError, UnknownTemplate, OSError) as exc:
        raise DataError(f"--model {args.model} / --template {args.template}: {exc}") from None
    measured = measure(report.examples, report.format, tokenizer, choice, args.cutoff)
    if Path(report.source).is_file():  # kept for `tunelab estimate` and the Train tab's estimate of this file
        from tunelab.core.token_lengths import save_lengths

        save_lengths(Path(report.source), args.model, args.template, measured.lengths)
    where = f"template {choice.name}, " if choice else ""
    print(f"  token lengths ({where}tokenizer of {args.model}): {length_summary(measured.lengths)}")
    for line in histogram_lines(measured.lengths, args.cutoff):
        print("   " + line)
    print(f"  cutoff {args.cutoff}: {measured.truncated} row(s) truncated, {measured.dropped} dropped "
          f"(nothing to train left), {len(measured.refused)} refused by the template")
    for refusal in measured.refused[:5]:
        print(f"    {refusal}")


def _list(args: argparse.Namespace) -> int:
    try:
        datasets = load_dataset_registry(args.dataset_dir)
    except DataError as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 1
    for name, spec in sorted(datasets.specs.items()):
        where = spec.file or f"hub:{spec.hub}"
        print(f"{name:<20} {spec.format:<11} {where:<28} {spec.description}")
    for name, reason in sorted(datasets.errors.items()):
        print(f"{name:<20} {'unusable':<11} {reason}")
    return 0
