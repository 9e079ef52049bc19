"""The trainer's own estimate at start: an ``estimate`` event and status.json's ``estimate``, for the Runs tab to
set beside what the run then measures. It never fails a run."""

from __future__ import annotations

import logging
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.estimate import DataSize, Device, cpu_device, estimate
from tunelab.core.gpus import gpu_class
from tunelab.core.model_shape import load_shape

log = logging.getLogger(__name__)
SUMMARY = ("reserved_gib", "allocated_gib", "tokens_per_s", "needed_gib", "memory_gib", "fits", "path", "device")


def this_device() -> Device:
    """The GPU this process trains on (CUDA device 0 of its visible ones), else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return cpu_device()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return Device(props.name, gpu_class(props.name), round(props.total_memory / 2**30, 1))


def record_estimate(run_: Any, writer: Any, config: RunConfig, path: str, stats: Any) -> None:
    """Estimate this run from its model folder, its device and the data just prepared; log and record it."""
    try:
        kept = max(int(stats.kept), 1)
        data = DataSize(kept, (), stats.tokens / kept, "the run's prepared data")
        est = estimate(config, load_shape(path), this_device(), data)
    except Exception as exc:  # an estimate is advice: a model config it cannot read must not stop training
        log.warning("estimate skipped: %s", str(exc).splitlines()[0][:300])
        return
    log.info("estimate: %s -- %s", est.line(), est.verdict())
    writer.write("estimate", **est.as_event())
    run_.set_status("running", estimate={k: est.as_event()[k] for k in SUMMARY})
