"""The `tunelab` command line. Importing this package must stay fast: no torch, no gradio at import time."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from tunelab import __version__

def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune open LLMs: studio, CLI and API.")
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.register(commands)
    return parser


def _command_modules() -> list:
    from tunelab.cli import api, chat, data, demo, estimate, evaluate, export, import_config, templates, train, webui

    return [train, estimate, import_config, data, templates, demo, webui, chat, api, export, evaluate]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tunelab` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
