"""`tunelab data add|list|show|rm|rename|check`: the user's dataset registry, previews and checks (the Data tab's
verbs). Every user error is one line on stderr and exit status 1; nothing here imports torch until a check measures
token lengths."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from tunelab.core.datasets import FORMATS, DataError, load_dataset_registry, user_registry_file

MARK_OPEN, MARK_CLOSE = "⟦", "⟧"


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    group = commands.add_parser("data", help="register, preview, check and list datasets")
    sub = group.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    add = _verb(sub, "add", _add, "register a dataset file, folder or hub id in your registry (format and columns guessed)")
    add.add_argument("name", help="the dataset's name (letters, digits, '_', '.', '-')")
    add.add_argument("source", help="a .json/.jsonl/.csv/.tsv/.parquet/.txt file, a folder of them, or a hub id owner/name")
    add.add_argument("--format", choices=FORMATS, help="the file's format (default: guessed from its first rows)")
    add.add_argument("--columns", nargs="+", metavar="KEY=COLUMN", help="map format keys to the file's columns, e.g. output=answer")
    add.add_argument("--description", default="", help="a line shown in lists")
    add.add_argument("--copy", action="store_true", help="keep a copy of the file in TUNELAB_HOME (default: point at it)")
    check = _verb(sub, "check", _check, "validate every row of a dataset (exit 1 on any malformed row)")
    check.add_argument("dataset", help="a registered name or a file path")
    check.add_argument("--format", choices=FORMATS, help="the file's format (default: registry entry, else guessed)")
    check.add_argument("--dataset-dir", help="folder holding dataset_info.json (default: the shipped data/ + yours)")
    check.add_argument("--validation", help="a validation dataset (name or path) to check for overlap with this one")
    check.add_argument("--model", help="measure token lengths with this model's tokenizer (a folder, hub id or 'demo')")
    check.add_argument("--template", default="auto", help="chat template for the lengths (default: auto)")
    check.add_argument("--cutoff", type=int, default=1024, help="cutoff_len to count truncated/dropped rows (1024)")
    check.add_argument("--json", action="store_true", help="print the findings as one JSON object (for scripts)")
    _verb(sub, "list", _list, "list registered datasets, shipped and yours (and entries that cannot be used)").add_argument("--dataset-dir")
    show = _verb(sub, "show", _show, "print a dataset's first rows raw and rendered through the chat template", "name")
    show.add_argument("--rows", type=int, default=3, help="how many rows (3)")
    show.add_argument("--model", default="demo", help="the model whose template renders the rows (demo)")
    show.add_argument("--template", default="auto")
    _verb(sub, "rm", _rm, "remove one of your datasets (shipped ones are read-only)", "name")
    _verb(sub, "rename", _rename, "rename one of your datasets", "old", "new")


def _verb(sub: argparse._SubParsersAction, name: str, handler: Callable[[argparse.Namespace], int], help: str,
          *positionals: str) -> argparse.ArgumentParser:
    """One `data` verb whose DataError is one line on stderr and exit status 1."""
    parser = sub.add_parser(name, help=help)
    for positional in positionals:
        parser.add_argument(positional)
    parser.set_defaults(handler=_guarded(handler))
    return parser


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a verb; a DataError becomes one line on stderr and exit status 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except DataError as exc:
            print(f"tunelab: {exc}", file=sys.stderr)
            return 1
    return run


def _add(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunelab.services.data_registry import parse_columns, register as save

    name, note = save(args.name, args.source, args.format, parse_columns(args.columns), args.description,
                      upload_name=Path(args.source).name if args.copy else None)
    print(f"saved dataset {name!r} in {user_registry_file()}: {note}")
    print(f"  use it: tunelab train ... dataset={name}   (check it: tunelab data check {name} --model demo)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from tunelab.services.datacheck import check_dataset

    result = check_dataset(args.dataset, format=args.format, dataset_dir=args.dataset_dir, validation=args.validation,
                           model=args.model, template=args.template, cutoff=args.cutoff)
    if not result.ok:
        print(f"tunelab: {result.problem_text()}", file=sys.stderr)
    print(json.dumps(result.summary(), ensure_ascii=False) if args.json else "\n".join(result.lines()))
    return 0 if result.ok else 1


def _list(args: argparse.Namespace) -> int:
    datasets = load_dataset_registry(args.dataset_dir)
    for name, spec in sorted(datasets.specs.items()):
        where = spec.file or f"hub:{spec.hub}"
        mine = "yours" if name in datasets.user else "shipped"
        print(f"{name:<20} {spec.format:<11} {mine:<8} {where:<28} {spec.description}")
    for name, reason in sorted(datasets.errors.items()):
        print(f"{name:<20} {'unusable':<11} {reason}")
    for note in datasets.notes:
        print(f"note: {note}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from tunelab.services.data_registry import show_rows
    from tunelab.webui.preview import render_examples

    spec, rows = show_rows(args.name, args.rows)
    print(f"{args.name}: format {spec.format}, {spec.file or 'hub:' + str(spec.hub)}")
    if not rows:
        print("  (a hub dataset: its rows are downloaded when training starts)")
        return 0
    print("raw rows:")
    for row in rows:
        print("  " + json.dumps(row, ensure_ascii=False, default=str)[:2000])
    preview = render_examples(model=args.model, template=args.template, stage="pt" if spec.format == "text" else "sft",
                              datasets=[args.name], limit=args.rows)
    print(f"rendered ({preview.note}); the loss falls on {MARK_OPEN}…{MARK_CLOSE}:")
    for text, label in preview.segments:
        shown = text if label is None else f"{MARK_OPEN}{'' if label == 'trained' else label + ': '}{text}{MARK_CLOSE}"
        print(shown, end="")
    print()
    return 0


def _rm(args: argparse.Namespace) -> int:
    from tunelab.core.user_datasets import remove_entry

    remove_entry(args.name)
    print(f"removed dataset {args.name!r} from {user_registry_file()}")
    return 0


def _rename(args: argparse.Namespace) -> int:
    from tunelab.core.user_datasets import rename_entry

    rename_entry(args.old, args.new)
    print(f"renamed dataset {args.old!r} to {args.new!r} in {user_registry_file()}")
    return 0
