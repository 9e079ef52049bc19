"""`tunelab estimate CONFIG [key=value ...] [--gpu NAME] [--json]`: peak GPU memory, tokens/s and time per epoch,
without training (`tunelab train CONFIG --estimate` prints the same)."""

from __future__ import annotations

import argparse
import json
import sys

from tunelab.core.config import ConfigError
from tunelab.core.datasets import DataError
from tunelab.core.gpus import class_names


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `estimate` command."""
    parser = commands.add_parser("estimate", help="estimate peak GPU memory and time per epoch of a run config")
    parser.add_argument("config", nargs="?", help="YAML run config (tunelab's or LLaMA-Factory's); omit for defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    add_gpu_option(parser)
    parser.add_argument("--json", action="store_true", help="print the estimate as one JSON object")
    parser.set_defaults(handler=_estimate)


def add_gpu_option(parser: argparse.ArgumentParser) -> None:
    """--gpu: which device the estimate is for."""
    parser.add_argument("--gpu", default="auto",
                        help=f"auto (the first visible GPU, else the CPU), a GPU index, or one of: {', '.join(class_names())}")


def _estimate(args: argparse.Namespace) -> int:
    return estimate_command(args, args.json)


def estimate_command(args: argparse.Namespace, as_json: bool = False) -> int:
    """`tunelab estimate` and `tunelab train --estimate`: the config file and overrides of ``args``, estimated on
    ``args.gpu`` and printed; 2 with one line on stderr for bad input."""
    from tunelab.cli.train import _split_args

    try:
        path, overrides = _split_args(args)
        return print_estimate(path, overrides, args.gpu, as_json)
    except ConfigError as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 2


def print_estimate(path: str | None, overrides: list[str], gpu: str, as_json: bool = False) -> int:
    """Load the config, estimate it on ``gpu`` and print the result; 2 on a config, model or data error."""
    from tunelab.core.lf_import import load_any_config
    from tunelab.services.estimate import describe_model, estimate_config, report_lines

    try:
        config, notes = load_any_config(path, overrides)
        for note in notes:
            print(f"tunelab: {note}", file=sys.stderr)
        est = estimate_config(config, gpu)
    except (ConfigError, DataError) as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(est.as_event()))
        return 0
    for line in report_lines(est, describe_model(config.model)):
        print(line)
    for hint in est.hints:
        print(f"  would fit better with {hint}")
    return 0
