"""The run directory: the contract between whoever starts a run and whoever watches it.

runs/<run-id>/ config.yaml, command.sh, status.json, events.jsonl, train.log, checkpoints/, adapter/ or
model/, tb/. status.json is always written atomically.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import socket
import time
from pathlib import Path
from typing import Any

from tunelab.core.config import RunConfig, dump_config, load_config
from tunelab.core.files import read_json, write_atomic, write_json_atomic
from tunelab.core.paths import runs_dir

STATES = ("queued", "running", "succeeded", "failed", "aborted")
FINAL_STATES = ("succeeded", "failed", "aborted")


def new_run_id(config: RunConfig) -> str:
    """A readable, sortable run id: 20261128-105301-demo-lora-sft."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    model = re.sub(r"[^A-Za-z0-9.]+", "-", Path(config.model.rstrip("/")).name).strip("-").lower()[:32] or "model"
    return f"{stamp}-{model}-{config.method}-{config.stage}"


class RunDir:
    """Paths and state files of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.yaml")
    command_file = property(lambda self: self.path / "command.sh")
    status_file = property(lambda self: self.path / "status.json")
    events_file = property(lambda self: self.path / "events.jsonl")
    log_file = property(lambda self: self.path / "train.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter_dir = property(lambda self: self.path / "adapter")
    model_dir = property(lambda self: self.path / "model")
    tb_dir = property(lambda self: self.path / "tb")
    logs_dir = property(lambda self: self.path / "logs")  # several processes: per-rank logs and rank errors

    @property
    def run_id(self) -> str:
        """The folder name."""
        return self.path.name

    def exists(self) -> bool:
        """Whether this looks like a run directory (it has a config)."""
        return self.config_file.is_file()

    def config(self) -> RunConfig:
        """The run's resolved config."""
        return load_config(self.config_file)

    def status(self) -> dict[str, Any]:
        """status.json's content ({} when missing)."""
        return read_json(self.status_file, {}) or {}

    def set_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Atomically update status.json (merging with what is there)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; valid: {', '.join(STATES)}")
        status = {**self.status(), **fields, "state": state, "updated_at": time.time()}
        if state == "running":
            status.setdefault("started_at", time.time())
            status.update(pid=os.getpid(), host=socket.gethostname())
        if state in FINAL_STATES:
            status["finished_at"] = time.time()
        write_json_atomic(self.status_file, status)
        return status

    def final_weights(self) -> Path | None:
        """The saved adapter or model folder, if training saved one."""
        for folder in (self.adapter_dir, self.model_dir):
            if folder.is_dir() and any(folder.iterdir()):
                return folder
        return None

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoints/checkpoint-N folder."""
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def create_run(config: RunConfig, parent: str | Path | None = None) -> RunDir:
    """Make (or reuse, when resuming) the run directory and write config.yaml, command.sh and status.json."""
    if config.output_dir:
        path = Path(config.output_dir)
    else:
        path = Path(parent or runs_dir()) / new_run_id(config)
    run = RunDir(_node_path(path.resolve(), config.node_rank))
    if run.exists() and not config.resume:
        # Re-running a finished run's config.yaml starts a new run beside it rather than overwriting it.
        run = RunDir(_node_path(run.path.parent / new_run_id(config), config.node_rank))
    run.path.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"output_dir": str(run.path)})
    write_atomic(run.config_file, dump_config(config))
    write_atomic(run.command_file, command_script(run))
    run.command_file.chmod(0o755)
    if not run.status() or config.resume:
        run.set_status("queued", run_id=run.run_id, created_at=run.status().get("created_at", time.time()))
    return run


def _node_path(path: Path, node_rank: int) -> Path:
    """Hosts other than node 0 keep their own folder (<run>-node<N>: their status and logs), even on a shared disk."""
    suffix = f"-node{node_rank}"
    return path if node_rank == 0 or path.name.endswith(suffix) else path.with_name(path.name + suffix)


def command_script(run: RunDir) -> str:
    """The equivalent CLI command, as a runnable shell script."""
    return "#!/usr/bin/env bash\n# Re-run this training from its resolved config.\n" + (
        f"tunelab train {shlex.quote(str(run.config_file))}\n"
    )


def list_runs(parent: str | Path | None = None) -> list[RunDir]:
    """Run directories under ``parent`` (default ./runs), newest first."""
    root = Path(parent or runs_dir())
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda r: r.path.name, reverse=True)
