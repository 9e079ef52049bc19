"""The trainer's rank: which process of a torchrun launch this is, and what it may write.

Rank 0 alone writes status.json, events.jsonl and the final weights; every rank's output is teed by torchrun
into RUN_DIR/logs/. A rank that fails records its one-line error in RUN_DIR/logs/rank-<N>.error.json so the
launcher can name the rank that broke the job (services/runner.rank_failure).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.files import write_atomic
from tunelab.core.rundir import RunDir

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def rank() -> int:
    """The global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """The rank on this host (its GPU index among CUDA_VISIBLE_DEVICES)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """How many processes train together (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """Whether torchrun started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def is_main() -> bool:
    """Whether this process writes the run's status, events and weights."""
    return rank() == 0


def node_main() -> bool:
    """Whether this process keeps the status.json of its host's run folder: rank 0, or local rank 0 of another host
    (whose folder is <run>-node<N>, see core.rundir.create_run)."""
    return is_main() or (local_rank() == 0 and int(os.environ.get("GROUP_RANK", "0")) > 0)


def init(config: RunConfig) -> None:
    """Join the process group (gloo on CPU, nccl on GPUs) with the configured collective timeout; pin the GPU."""
    check_device(config)
    if not launched():
        return
    _die_with_launcher()
    import torch
    import torch.distributed as torch_dist

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # QLoRA's device_map and every tensor land on this rank's own GPU
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.collective_timeout_s))
    log.info("rank %d/%d (local %d) joined the process group", rank(), world_size(), local_rank())


def record_pid(run_: RunDir) -> None:
    """logs/rank-<N>.pid: lets Stop (services/runner.stop_run) make sure no rank outlives its job."""
    if launched():
        write_atomic(run_.logs_dir / f"rank-{rank()}.pid", f"{os.getpid()}\n")


def check_device(config: RunConfig) -> None:
    """FSDP2 and DeepSpeed shard across GPUs only (accelerate falls back to plain data parallel on CPU processes):
    refuse rather than silently run something else."""
    import torch

    from tunelab.core.config import ConfigError

    if config.strategy not in ("none", "ddp") and not torch.cuda.is_available():
        raise ConfigError(
            f"strategy: {config.strategy!r} needs CUDA GPUs (accelerate applies FSDP and DeepSpeed only on GPUs); "
            "valid choices without a GPU: none, ddp"
        )


def _die_with_launcher() -> None:
    """Linux: SIGKILL this rank if its torchrun agent dies (torchrun starts ranks in their own sessions)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenizes and fills the cache); the other ranks then run it (cache hits)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop at the same step)."""
    import torch
    import torch.distributed as torch_dist

    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if torch_dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
    return bool(value.item())


def finalize() -> None:
    """Leave the process group."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        with contextlib.suppress(Exception):
            torch_dist.destroy_process_group()


class NullWriter(EventWriter):
    """The event writer of ranks other than 0: builds the event, writes nothing."""

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        """Return the event without appending it."""
        return {"v": 1, "type": type, "time": round(time.time(), 3), **fields}


class RankRun(RunDir):
    """A run directory as one rank of several sees it: rank 0 writes status.json; every rank records its failure."""

    def set_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Rank 0 (and local rank 0 of other hosts): update status.json. Every rank: a failure into logs/rank-<N>.error.json."""
        if state == "failed":
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            error = {"rank": rank(), "time": time.time(), "error": fields.get("error", ""), "pid": os.getpid(),
                     "where": fields.get("where")}
            write_atomic(self.logs_dir / f"rank-{rank()}.error.json", json.dumps(error) + "\n")
        if node_main():
            return super().set_status(state, **fields)
        return {**self.status(), **fields, "state": state}


def for_rank(run_dir: str | os.PathLike) -> tuple[RunDir, EventWriter]:
    """The run directory and event writer this process may use."""
    if not launched():
        run_ = RunDir(run_dir)
        return run_, EventWriter(run_.events_file)
    run_ = RankRun(run_dir)
    return run_, EventWriter(run_.events_file) if is_main() else NullWriter(run_.events_file)


def check_resume(config: RunConfig, status: dict[str, Any]) -> None:
    """A resumed run must use as many processes as the run that wrote its checkpoints (sharded state)."""
    from tunelab.core.config import ConfigError

    before = status.get("world_size")
    if config.resume and before and int(before) != world_size():
        raise ConfigError(
            f"resume: the checkpoints were written by {before} process(es), this launch has {world_size()}; "
            f"set nproc_per_node x nnodes = {before}"
        )


def training_kwargs(config: RunConfig, run_: RunDir) -> dict[str, Any]:
    """The TrainingArguments fields of the strategy (empty for one plain process)."""
    from tunelab.core.distributed import DEEPSPEED_FILE, FSDP_FILE

    if not launched():
        return {}
    kwargs: dict[str, Any] = {"ddp_timeout": config.collective_timeout_s, "ddp_find_unused_parameters": False}
    if config.strategy == "fsdp2":
        kwargs.update(fsdp="full_shard", fsdp_config=str(run_.path / FSDP_FILE))
    elif config.strategy.startswith("deepspeed"):
        kwargs["deepspeed"] = str(run_.path / DEEPSPEED_FILE)
    return kwargs


def booster_note(config: RunConfig) -> str:
    """booster_reason of a multi-process run (the fast path is single-process)."""
    return f"auto: plain transformers (the fast path is single-process; this run has {world_size()} processes, {config.strategy})"
