"""`tunelab export --run RUN_DIR | --model M --adapter A [--out DIR] ...`: merge, save, verify, convert."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tunelab.core.config import ConfigError
from tunelab.core.export_config import ExportConfig, validate_export_config
from tunelab.core.serving import require_vllm
from tunelab.core.sources import SourceError
from tunelab.cli.schema_args import add_schema_options, schema_values

SOURCE = ["run", "model", "adapter"]
OPTIONS = ["out", "shard_size", "dtype", "gguf", "template", "reload_unquantized", "verify", "serve_check", "overwrite",
           "push_to_hub", "trust_remote_code"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `export` command."""
    parser = commands.add_parser(
        "export", help="merge a LoRA/DoRA adapter into its base and export a verified model folder",
        description="Merge in full precision, save sharded safetensors with tokenizer, chat_template, "
        "generation_config, run config and an Ollama Modelfile, then reload it with plain transformers and "
        "compare logits with the unmerged model. GGUF: " + "Llama-architecture models with a byte-level BPE tokenizer.",
    )
    source = parser.add_argument_group("source (a run, or a model and/or adapter)")
    add_schema_options(source, ExportConfig, SOURCE)
    add_schema_options(parser, ExportConfig, OPTIONS)
    parser.set_defaults(handler=_export)


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    """The ExportConfig the arguments ask for (ConfigError on bad input)."""
    config = validate_export_config(schema_values(args, SOURCE + OPTIONS), "tunelab export")
    if config.serve_check:  # before the merge, not after it (as the Export tab checks it)
        require_vllm("serve_check")
    return config


def _export(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tunelab.engine.export import ExportError, export_model
    from tunelab.engine.gguf import GgufUnsupported
    from tunelab.services.holds import hold_gpus

    what = config.run or config.adapter or config.model or "a model"
    try:  # the Export tab's job holds a GPU through the queue too: nothing here lands on a GPU a job holds
        with hold_gpus(f"tunelab export of {Path(what).name or what}", on_wait=lambda reason: print(f"queued: {reason}", flush=True)):
            report = export_model(config, progress=lambda message, **_: print(message, flush=True))
    except KeyboardInterrupt:
        return 130
    except (ConfigError, SourceError, GgufUnsupported, ExportError, FileNotFoundError) as exc:
        print(f"tunelab export: {exc}", file=sys.stderr)
        return 2 if not str(exc).startswith("verification failed") else 1
    verify = report.get("verify")
    print(f"exported: {report['out']}")
    if verify:
        print(f"verify: {'PASSED' if verify['passed'] else 'FAILED'}: {verify['summary']}")
    if report.get("gguf"):
        g = report["gguf"]
        print(f"gguf: {g['file']} ({g['bytes'] / 2**20:.1f} MiB, {g['tensors']} tensors, read back within {g['max_rel_err']:.2g})")
    served = report.get("serve_check")
    if served:
        print(f"serve check: {'PASSED' if served['passed'] else 'FAILED'}: {served['summary']}")
        return 0 if served["passed"] else 1
    return 0
