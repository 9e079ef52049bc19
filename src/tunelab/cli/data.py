"""`tunelab data check|list`: validate datasets without training."""

from __future__ import annotations

import argparse
import sys

from tunelab.core.datasets import FORMATS, DataError, load_dataset_registry, validate_file


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    group = commands.add_parser("data", help="check and list datasets")
    sub = group.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate every row of a dataset (exit 1 on any malformed row)")
    check.add_argument("dataset", help="a name from dataset_info.json or a file path")
    check.add_argument("--format", choices=FORMATS, help="the file's format (default: registry entry, else guessed)")
    check.add_argument("--dataset-dir", help="folder holding dataset_info.json (default: the shipped data/)")
    check.set_defaults(handler=_check)
    listing = sub.add_parser("list", help="list registered datasets")
    listing.add_argument("--dataset-dir")
    listing.set_defaults(handler=_list)


def _check(args: argparse.Namespace) -> int:
    try:
        datasets = load_dataset_registry(args.dataset_dir)
        name, spec, local = datasets.resolve(args.dataset, args.format)
        if local is None:
            print(f"tunelab: {name!r} is a hub dataset ({spec.hub}); it is checked when training loads it", file=sys.stderr)
            return 0
        report = validate_file(name, spec, local)
        report.raise_if_bad()
    except DataError as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: {report.rows} rows, format {spec.format}, all valid ({local})")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        datasets = load_dataset_registry(args.dataset_dir)
    except DataError as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 1
    for name, spec in sorted(datasets.specs.items()):
        where = spec.file or f"hub:{spec.hub}"
        print(f"{name:<20} {spec.format:<11} {where:<28} {spec.description}")
    return 0
