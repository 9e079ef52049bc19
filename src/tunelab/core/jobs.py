"""Job directories for evaluation and export jobs, parallel to the training run directory.

A job folder holds ``<kind>.yaml`` (its resolved options), ``status.json`` (queued|running|succeeded|failed|
aborted, written atomically), ``events.jsonl``, ``<kind>.log`` (the process's output) and ``results.json``.
The options file is not called config.yaml, so job folders never pass for training runs.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from pathlib import Path
from typing import Any

import yaml

from tunelab.core.files import read_json, write_atomic
from tunelab.core.rundir import RunDir

JOB_KINDS = ("eval", "export")


class JobDir(RunDir):
    """Paths and state files of one evaluation or export job."""

    def __init__(self, path: str | Path, kind: str):
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}; valid: {', '.join(JOB_KINDS)}")
        super().__init__(path)
        self.kind = kind

    config_file = property(lambda self: self.path / f"{self.kind}.yaml")
    log_file = property(lambda self: self.path / f"{self.kind}.log")
    results_file = property(lambda self: self.path / "results.json")
    predictions_file = property(lambda self: self.path / "predictions.jsonl")

    def options(self) -> dict[str, Any]:
        """The job's options as written at creation."""
        return yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}

    def results(self) -> dict[str, Any] | None:
        """results.json, once the job wrote it."""
        return read_json(self.results_file)


def new_job_id(kind: str, label: str) -> str:
    """A readable, sortable job id: 20261128-105301-eval-<label>."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    clean = re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-").lower()[-40:] or "model"
    return f"{stamp}-{kind}-{clean}"


def create_job(kind: str, options: dict[str, Any], parent: str | Path, label: str, path: str | Path | None = None) -> JobDir:
    """Make a job folder under ``parent`` (or at ``path``) and write its options and a queued status."""
    folder = Path(path) if path else Path(parent) / new_job_id(kind, label)
    if folder.exists() and not path:
        folder = folder.with_name(folder.name + f"-{time.time_ns() % 10**6}")
    job = JobDir(folder.resolve(), kind)
    job.path.mkdir(parents=True, exist_ok=True)
    write_atomic(job.config_file, yaml.safe_dump(options, sort_keys=False, allow_unicode=True))
    job.set_status("queued", job_id=job.run_id, kind=kind, created_at=time.time())
    return job


def list_jobs(parent: str | Path, kind: str) -> list[JobDir]:
    """Job folders of ``kind`` under ``parent``, newest first."""
    root = Path(parent)
    if not root.is_dir():
        return []
    jobs = [JobDir(p, kind) for p in root.iterdir() if p.is_dir() and (p / f"{kind}.yaml").is_file()]
    return sorted(jobs, key=lambda j: j.path.name, reverse=True)
