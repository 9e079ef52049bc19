"""`tunelab train CONFIG.yaml [key=value ...]`: validate, create the run directory, run the trainer process."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from tunelab.cli.estimate import add_gpu_option, estimate_command
from tunelab.core.config import ConfigError, RunConfig
from tunelab.core.datasets import DataError
from tunelab.core.events import EventTail
from tunelab.core.lf_import import load_any_config
from tunelab.core.rundir import RunDir
from tunelab.core.templates import UnknownTemplate
from tunelab.services.preflight import preflight  # also imported from here by webui/train_actions.py


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    parser = commands.add_parser("train", help="train from a YAML run config (plus key=value overrides)")
    parser.add_argument("config", nargs="?", help="YAML run config (tunelab's or LLaMA-Factory's); omit for defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    parser.add_argument("--detach", action="store_true", help="start the run in the background and exit")
    parser.add_argument("--runs-dir", help="parent folder for new run directories (default ./runs)")
    parser.add_argument("--estimate", action="store_true", help="print the memory/time estimate and exit (no training)")
    add_gpu_option(parser)
    parser.set_defaults(handler=_train)


def _split_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The config file may come before or after the key=value overrides."""
    items = [i for i in [args.config, *args.overrides] if i is not None]
    files = [i for i in items if "=" not in i or Path(i).is_file()]
    if len(files) > 1:
        raise ConfigError(f"give one config file, not {len(files)}: {', '.join(files)}")
    return (files[0] if files else None), [i for i in items if i not in files]


def _train(args: argparse.Namespace) -> int:
    from tunelab.services.runner import reconcile, signal_group

    if args.estimate:
        return estimate_command(args)

    try:
        path, overrides = _split_args(args)
        config, notes = load_any_config(path, overrides)
        for note in notes:
            print(f"tunelab: {note}", file=sys.stderr)
        preflight(config)
    except (ConfigError, DataError, UnknownTemplate) as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 2
    resuming = config.resume
    try:
        run, queue, process = _start_through_queue(config, args.runs_dir)
    except (ValueError, KeyboardInterrupt) as exc:
        print(f"tunelab: {exc or 'interrupted while queued'}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 130
    print(f"run directory: {run.path}")
    if config.node_rank > 0:
        print(f"node {config.node_rank} of {config.nnodes}: node 0 writes the status, events and weights; this node's logs: {run.logs_dir}")
    if args.detach:
        print(f"trainer pid {process.pid}; follow with: tail -f {run.log_file}")
        return 0
    stopping = {"asked": False}

    def _forward(signum: int, frame: object) -> None:
        if not stopping["asked"]:
            stopping["asked"] = True
            print("\nstopping: the trainer finishes its step and saves (Ctrl-C again to wait)", file=sys.stderr)
            signal_group(run.status().get("pgid"))

    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGTERM, _forward)
    _follow(run, process, skip_existing=resuming)
    queue.poll()  # the job's devices are free again
    status = reconcile(run)  # also names the rank that broke a multi-process run
    print(f"{status.get('state')}: {status.get('error') or status.get('message', '')}")
    weights = run.final_weights()
    if weights:
        print(f"saved: {weights}")
    return {"succeeded": 0, "aborted": 130}.get(status.get("state"), 1)


def _start_through_queue(config: RunConfig, runs_parent: str | None):
    """Create the run and queue it in the runs folder's job queue (shared with a studio on the same folder), so it
    starts only once its GPUs are free; with no studio running, this process schedules it. Returns (run, queue, process)."""
    from tunelab.core.paths import runs_dir
    from tunelab.core.rundir import create_run
    from tunelab.services.gpus import detect_gpus
    from tunelab.services.jobs import JobQueue

    queue = JobQueue(Path(runs_parent or runs_dir()), gpus=detect_gpus())
    queue.poll()  # reap jobs whose processes are gone, so a resumed run is not "already running"
    run = create_run(config, runs_parent)

    def waiting(reason: str) -> None:
        print(f"queued: {reason}", flush=True)

    return run, queue, queue.run_when_free(run, on_wait=waiting)


def _follow(run: RunDir, process, skip_existing: bool = False) -> str:
    offset = run.events_file.stat().st_size if skip_existing and run.events_file.exists() else 0
    tail = EventTail(run.events_file, offset)
    while True:
        for event in tail.read_new():
            _print_event(event)
        if process.poll() is not None:
            for event in tail.read_new():
                _print_event(event)
            return run.status().get("state", "failed")
        time.sleep(0.5)


def _print_event(event: dict) -> None:
    kind = event.get("type")
    if kind == "train":
        print(
            f"step {event['step']}/{event['total_steps']}  loss {event['loss']:.4f}  lr {event.get('lr') or 0:.2e}  "
            f"{event.get('tokens_per_s') or 0:.0f} tok/s  eta {event.get('eta_s') or 0:.0f}s",
            flush=True,
        )
    elif kind == "eval":
        print(f"step {event['step']}  eval_loss {event['eval_loss']:.4f}", flush=True)
    elif kind == "data":
        print(
            f"data: {event['kept']} examples kept of {event['examples']} ({event['truncated']} truncated, "
            f"{event['dropped_too_long']} dropped as too long, {event['dropped_refused']} refused by the template); "
            f"{event['tokens']} tokens, {event['trained_tokens']} trained",
            flush=True,
        )
