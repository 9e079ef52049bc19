"""Start export and evaluation jobs as their own process groups (like training runs), and read their state.

An export job of a run lives in <run>/exports/<job-id>/, an evaluation job in <run>/evals/<job-id>/; jobs on
a bare model/adapter go under <runs_dir>/exports or <runs_dir>/evals. ``run_job_and_wait`` is the Python call.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.core.jobs import JobDir, create_job, list_jobs
from tunelab.core.paths import runs_dir
from tunelab.core.rundir import FINAL_STATES
from tunelab.services.gpus import detect_gpus
from tunelab.services.jobs import JOB_MODULES as MODULES
from tunelab.services.jobs import JobQueue
from tunelab.services.runner import reconcile, spawn

FOLDERS = {"export": "exports", "eval": "evals"}


def job_parent(kind: str, run: str | None, parent: str | Path | None = None) -> Path:
    """Where jobs of ``kind`` for ``run`` (or for a bare model) are created."""
    if run:
        return Path(run) / FOLDERS[kind]
    return Path(parent or runs_dir()) / FOLDERS[kind]


def start_job(
    kind: str, options: dict[str, Any], parent: str | Path | None = None, env: dict[str, str] | None = None,
    path: str | Path | None = None, on_wait: Callable[[str], None] | None = None,
) -> tuple[JobDir, subprocess.Popen]:
    """Create the job folder for validated ``options`` and start its process: at once on a machine without GPUs,
    else through the runs folder's job queue, once a GPU is free (one scheduler for every GPU job); ``on_wait``
    gets the reason it waits."""
    run = options.get("run")
    label = Path(run).name if run else Path(options.get("adapter") or options.get("model") or "model").name
    job = create_job(kind, options, job_parent(kind, run, parent), label, path)
    gpus = detect_gpus()
    if not gpus:  # no GPU to share: runs at once, beside any training
        return job, spawn(job, env, module=MODULES[kind])
    queue = JobQueue(Path(parent or runs_dir()), gpus=gpus)  # waits for a GPU no other job holds
    return job, queue.run_when_free(job, kind=kind, on_wait=on_wait)


def job_state(job: JobDir) -> dict[str, Any]:
    """status.json, with a vanished process marked failed."""
    return reconcile(job)


def is_final(status: dict[str, Any]) -> bool:
    """Whether the job has ended."""
    return status.get("state") in FINAL_STATES


def jobs_of(kind: str, run: str | Path | None, parent: str | Path | None = None) -> list[JobDir]:
    """Jobs of ``kind`` for a run (or for bare models), newest first."""
    return list_jobs(job_parent(kind, str(run) if run else None, parent), kind)


def run_job_and_wait(kind: str, options: dict[str, Any], parent: str | Path | None = None, timeout: float | None = None) -> tuple[JobDir, dict[str, Any]]:
    """The Python call behind the tabs: validate, start the job, wait; returns (job, results) or raises.

    ``kind`` 'eval' takes EvalConfig options, 'export' ExportConfig options; ConfigError on bad options,
    RuntimeError (with the job's one-line error) when the job fails.
    """
    from tunelab.core.eval_config import validate_eval_config
    from tunelab.core.export_config import validate_export_config

    validate = validate_eval_config if kind == "eval" else validate_export_config
    options = validate(options).model_dump(mode="json", exclude_none=True)
    job, process = start_job(kind, options, parent)
    process.wait(timeout=timeout)
    status = job_state(job)
    if status.get("state") != "succeeded":
        raise RuntimeError(f"{kind} job {job.path} {status.get('state')}: {status.get('error') or status.get('message', '')}")
    return job, job.results() or {}
