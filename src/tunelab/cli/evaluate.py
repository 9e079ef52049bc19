"""`tunelab eval --run RUN_DIR | --model M [--adapter A] [--metrics loss,predict,bench] ...`: an evaluation job.

The job runs as its own process (like training) in <run>/evals/<job-id>/; this command follows its events
and prints base vs fine-tuned metrics with the delta and its standard error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from tunelab.core.config import ConfigError, parse_overrides
from tunelab.core.eval_config import EvalConfig, validate_eval_config
from tunelab.core.events import EventTail
from tunelab.core.rundir import FINAL_STATES
from tunelab.core.serving import require_vllm
from tunelab.cli.schema_args import add_schema_options, schema_values

# EvalConfig fields with their own flag; every other field is a key=value option.
FLAGS = ["run", "model", "adapter", "metrics", "dataset", "tasks", "limit", "max_samples", "engine", "compare_base",
         "output_dir"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `eval` command."""
    parser = commands.add_parser(
        "eval", help="evaluate a fine-tuned model against its base: loss/perplexity, generation metrics, lm-eval tasks",
    )
    add_schema_options(parser, EvalConfig, FLAGS, {"compare_base": "--no-base"})
    parser.add_argument("--runs-dir", help="parent of job folders for a bare model/adapter (default ./runs)")
    parser.add_argument("--detach", action="store_true", help="start the job in the background and exit")
    parser.add_argument("options", nargs="*", metavar="key=value", help="any other EvalConfig option")
    parser.set_defaults(handler=_evaluate)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig the arguments ask for (ConfigError on bad input)."""
    data = parse_overrides(args.options)
    data.update(schema_values(args, FLAGS))
    return validate_eval_config(data, "tunelab eval")


def _evaluate(args: argparse.Namespace) -> int:
    from tunelab.core.sources import SourceError, resolve_source
    from tunelab.services.model_jobs import job_state, start_job
    from tunelab.services.runner import signal_group

    try:
        config = config_from_args(args)
        if config.engine == "vllm":
            require_vllm("engine 'vllm'")
        resolve_source(config.run, config.model, config.adapter, config.template)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SourceError as exc:
        print(f"tunelab eval: {exc}", file=sys.stderr)
        return 2
    options = config.model_dump(mode="json", exclude_none=True)
    job, process = start_job("eval", options, args.runs_dir, path=config.output_dir,
                             on_wait=lambda reason: print(f"queued: {reason}", flush=True))
    print(f"eval job: {job.path}")
    if args.detach:
        print(f"pid {process.pid}; follow with: tail -f {job.log_file}")
        return 0
    signal.signal(signal.SIGINT, lambda *_: signal_group(job.status().get("pgid")))
    tail = EventTail(job.events_file)
    while process.poll() is None:
        _print_events(tail)
        time.sleep(0.5)
    _print_events(tail)
    status = job_state(job)
    if status.get("state") != "succeeded":
        print(f"{status.get('state')}: {status.get('error') or status.get('message', '')}", file=sys.stderr)
        print(f"log: {job.log_file}", file=sys.stderr)
        return 130 if status.get("state") == "aborted" else 1
    print(format_results(job.results() or {}))
    return 0


def _print_events(tail: EventTail) -> None:
    for event in tail.read_new():
        if event.get("type") == "status" and event.get("state") not in FINAL_STATES:
            print(f"[{event.get('state')}] {event.get('message', '')}".rstrip(), flush=True)


def _fmt(value: float | None, stderr: float | None = None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    return text + (f" ± {stderr:.2g}" if stderr is not None else "")


def format_results(results: dict) -> str:
    """The metrics as an aligned text table: metric, base, fine-tuned, delta ± stderr."""
    header = ("metric", "base", "fine-tuned", "delta ± stderr")
    rows = [header] + [
        (m["name"], _fmt(m["base"], m["base_stderr"]), _fmt(m["tuned"], m["tuned_stderr"]), _fmt(m["delta"], m["delta_stderr"], True))
        for m in results.get("metrics", [])
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"note: {n}" for n in results.get("notes", [])]
    methods = sorted({m["stderr_method"] for m in results.get("metrics", [])})
    return "\n".join(lines + notes + [f"stderr: {m}" for m in methods])
