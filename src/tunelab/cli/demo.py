"""`tunelab demo`: build the embedded CPU demo model (tiny Llama + BPE tokenizer) into the cache."""

from __future__ import annotations

import argparse
import sys


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `demo` command."""
    parser = commands.add_parser("demo", help="build the embedded demo model (no download) and print its path")
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from tunelab.engine.demo import build_demo_model

    def progress(done: int, total: int) -> None:
        print(f"building the demo model: {done}/{total} pre-training steps", file=sys.stderr, flush=True)

    path = build_demo_model(force=args.force, progress=progress)
    print(path)
    print(f"try: tunelab train examples/demo_cpu_lora_sft.yaml   (model: demo resolves to {path})")
    return 0
