"""GPUs held by a process that does its own work on them: the Chat tab's model worker, `tunelab chat` and
`tunelab api`, `tunelab export`.

Such a process queues in the runs folder's job queue (services.jobs) like every GPU job, waits while other jobs
hold the GPUs, then keeps them until it leaves the ``with`` block or exits; a job that waits for them meanwhile
is told who holds them. Without GPUs there is nothing to share and the block runs at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelab.core.paths import runs_dir
from tunelab.services.gpus import Gpu, detect_gpus
from tunelab.services.jobs import JobQueue


@contextmanager
def hold_gpus(
    label: str, runs_parent: str | Path | None = None, gpu_count: int = 1, on_wait: Callable[[str], None] | None = None,
    gpus: list[Gpu] | None = None,
) -> Iterator[list[str]]:
    """Hold ``gpu_count`` free GPUs while the block runs; yields their indexes ([] on a machine without GPUs) and
    points CUDA_VISIBLE_DEVICES of this process (and its children) at them. ``label`` names the holder to the jobs
    that wait for them; ``on_wait`` gets the reason this one waits whenever that changes."""
    gpus = detect_gpus() if gpus is None else gpus
    if not gpus:
        yield []
        return
    queue = JobQueue(Path(runs_parent or runs_dir()), gpus=gpus)
    job = queue.hold(f"{label} (pid {os.getpid()})", os.getpid(), gpu_count)
    try:
        job = queue.wait_started(job, on_wait)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(job.devices)
        yield job.devices
    finally:
        queue.release(job.id)
