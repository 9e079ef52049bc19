"""The launcher: turns a run's config into the command that trains it.

One process: ``python -m tunelab.engine.train RUN_DIR``. Several (strategy ddp / fsdp2 / deepspeed_*), on one
host or many: torchrun (``python -m torch.distributed.run``) with one worker per process, every rank's
stdout/stderr teed into train.log (prefixed ``[default<rank>]:``) and kept per rank under RUN_DIR/logs/.
The FSDP2 or DeepSpeed config is written into the run directory (or the user's own file copied there).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from tunelab.core.config import RunConfig
from tunelab.core.distributed import DEEPSPEED_FILE, FSDP_FILE, deepspeed_settings, fsdp_settings
from tunelab.core.files import write_atomic
from tunelab.core.rundir import RunDir, command_script

TRAIN_MODULE = "tunelab.engine.train"


def uses_launcher(config: RunConfig) -> bool:
    """Whether the run needs torchrun (several processes, or a sharding strategy that needs a process group)."""
    return config.strategy != "none"


def torchrun_args(config: RunConfig, run: RunDir) -> list[str]:
    """torchrun's own options for this host: standalone rendezvous on one host, static node-0 rendezvous on many."""
    args = ["--nproc-per-node", str(config.nproc_per_node)]
    if config.nnodes == 1:
        args.insert(0, "--standalone")  # a free local port per job: concurrent jobs never collide
    else:
        args += [
            "--nnodes", str(config.nnodes), "--node-rank", str(config.node_rank),
            "--master-addr", config.master_addr, "--master-port", str(config.master_port),
        ]
    return [*args, "--max-restarts", "0", "--log-dir", str(run.logs_dir / f"node{config.node_rank}"), "--tee", "3"]


def train_argv(run: RunDir, config: RunConfig | None = None) -> list[str]:
    """The argv that trains ``run``."""
    config = config or run.config()
    entry = ["-m", TRAIN_MODULE, str(run.path)]
    if not uses_launcher(config):
        return [sys.executable, *entry]
    return [sys.executable, "-m", "torch.distributed.run", *torchrun_args(config, run), *entry]


def write_launch_files(run: RunDir, config: RunConfig) -> list[Path]:
    """Write the strategy's config (generated, or the user's file) into the run directory; return what was written."""
    written = []
    if config.strategy == "fsdp2":
        written.append(_place(run.path / FSDP_FILE, config.fsdp_config, fsdp_settings(config)))
    elif config.strategy.startswith("deepspeed"):
        written.append(_place(run.path / DEEPSPEED_FILE, config.deepspeed_config, deepspeed_settings(config)))
    if uses_launcher(config):
        run.logs_dir.mkdir(parents=True, exist_ok=True)
        for stale in run.logs_dir.glob("rank-*.error.json"):  # from an earlier attempt of a resumed run
            stale.unlink()
    script = command_script(run) + "# which launches " + _describe(config) + ":\n# " + shlex.join(train_argv(run, config)) + "\n"
    write_atomic(run.command_file, script)
    return written


def _describe(config: RunConfig) -> str:
    if not uses_launcher(config):
        return "one process"
    hosts = f" on each of {config.nnodes} hosts (this is node {config.node_rank})" if config.nnodes > 1 else ""
    return f"{config.nproc_per_node} process(es){hosts}, strategy {config.strategy}"


def _place(target: Path, user_file: str | None, generated: dict) -> Path:
    if user_file:
        shutil.copyfile(Path(user_file).expanduser(), target.with_name(target.name + ".tmp"))
        target.with_name(target.name + ".tmp").rename(target)
    else:
        write_atomic(target, json.dumps(generated, indent=2) + "\n")
    return target
