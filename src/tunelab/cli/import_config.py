"""`tunelab import-config LF.yaml [-o OUT]`: translate a LLaMA-Factory training YAML into a tunelab run config."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tunelab.core.config import ConfigError
from tunelab.core.lf_import import import_config


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `import-config` command."""
    parser = commands.add_parser("import-config", help="translate a LLaMA-Factory training YAML into tunelab's")
    parser.add_argument("file", help="LLaMA-Factory YAML (e.g. examples/train_lora/qwen3_lora_sft.yaml)")
    parser.add_argument("-o", "--output", help="write the tunelab YAML here (default: print it)")
    parser.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    try:
        text, notes = import_config(args.file)
    except ConfigError as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 2
    if not args.output:
        sys.stdout.write(text)  # the notes are its comment lines
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    target = Path(args.output)
    fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, target)
    print(f"wrote {target}; run it with: tunelab train {target}", file=sys.stderr)
    return 0
