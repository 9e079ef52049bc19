"""Run history: what each run directory holds (status, config, metrics), read incrementally and cached.

Every run's events.jsonl and train.log are tailed from a byte offset, so refreshing a table or a live plot
reads only what was appended since the last look, however many pages watch the same run.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.core.events import EventTail
from tunelab.core.rundir import FINAL_STATES, RunDir, list_runs
from tunelab.services.runner import group_alive

LOG_LINES = 200


@dataclass
class LogTail:
    """The last lines of a growing text file, read from a byte offset."""

    path: Path
    offset: int = 0
    lines: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    _partial: bytes = b""

    def read_new(self) -> int:
        """Read what was appended; returns how many complete lines arrived."""
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, 2)
                if size < self.offset:  # truncated or replaced: start over
                    self.offset, self._partial = 0, b""
                    self.lines.clear()
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return 0
        self.offset += len(chunk)
        parts = (self._partial + chunk).split(b"\n")
        self._partial = parts.pop()
        for part in parts:
            self.lines.append(part.decode("utf-8", "replace").rstrip("\r"))
        return len(parts)

    def text(self, n: int = 40) -> str:
        """The last ``n`` lines (plus a partial last line, e.g. a progress line without newline)."""
        partial = [self._partial.decode("utf-8", "replace")] if self._partial else []
        keep = max(n - len(partial), 0)
        return "\n".join((list(self.lines)[-keep:] if keep else []) + partial)


@dataclass
class RunMetrics:
    """Everything one run has reported so far, kept current by ``refresh``."""

    run: RunDir
    events: EventTail = None  # type: ignore[assignment]
    log: LogTail = None  # type: ignore[assignment]
    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] | None = None
    stage: dict[str, Any] | None = None  # the ``prepare`` event the trainer is in now (None once a loss follows it)
    version: int = 0  # bumps whenever new events arrive

    def __post_init__(self) -> None:
        self.events = self.events or EventTail(self.run.events_file)
        self.log = self.log or LogTail(self.run.log_file)

    def refresh(self) -> bool:
        """Read newly appended events and log lines; True if any event arrived."""
        self.log.read_new()
        new = self.events.read_new()
        for event in new:
            kind = event.get("type")
            if kind == "train" and event.get("loss") is not None:
                self.train.append(event)
                self.stage = None
            elif kind == "eval":
                self.eval.append(event)
            elif kind == "data":
                self.data = event
            elif kind == "prepare":
                self.stage = event
        if new:
            self.version += 1
        return bool(new)

    @property
    def last(self) -> dict[str, Any]:
        """The newest train event ({} before the first)."""
        return self.train[-1] if self.train else {}


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average (weight 0 = raw values)."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing: {weight} is not in [0, 1)")
    out: list[float] = []
    last, debias = 0.0, 0.0
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(out[-1] if out else value)
            continue
        last = last * weight + (1 - weight) * value
        debias = debias * weight + (1 - weight)
        out.append(last / debias)
    return out


def _read_config(run: RunDir) -> dict[str, Any]:
    try:
        data = yaml.safe_load(run.config_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def summarize(run: RunDir, metrics: RunMetrics, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the run history: status, model, method, datasets, steps, losses, duration."""
    status = run.status()
    config = config if config is not None else _read_config(run)
    last = metrics.last
    losses = [e["loss"] for e in metrics.train if e.get("loss") is not None]
    evals = [e["eval_loss"] for e in metrics.eval if e.get("eval_loss") is not None]
    prepare, duration = durations(status, metrics)
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "state": status.get("state", "unknown"),
        "model": config.get("model", ""),
        "method": config.get("method", ""),
        "stage": config.get("stage", ""),
        "datasets": ", ".join(config.get("dataset") or []),
        "step": last.get("step") or status.get("global_step") or 0,
        "total_steps": last.get("total_steps") or status.get("total_steps") or 0,
        "final_loss": losses[-1] if losses else None,
        "best_loss": min(evals) if evals else (min(losses) if losses else None),
        "best_is_eval": bool(evals),
        "duration_s": round(duration, 1) if duration is not None else None,
        "prepare_s": round(prepare, 1) if prepare is not None else None,
        "created_at": status.get("created_at"),
        "message": status.get("error") or status.get("message") or "",
    }


def durations(status: dict[str, Any], metrics: RunMetrics) -> tuple[float | None, float | None]:
    """(preparation, training) seconds: from launch to the first step (model build/load, tokenization, trainer start)
    and the training itself (``train_started_at``/``train_finished_at``; older runs: from their first train event)."""
    now, final = time.time(), status.get("state") in FINAL_STATES
    launched = status.get("launched_at") or status.get("started_at")
    began = status.get("train_started_at")
    if began is None and metrics.train:
        first = metrics.train[0]
        began = first.get("time", now) - (first.get("elapsed_s") or 0)
    ended = status.get("train_finished_at") or (status.get("finished_at") if final else None)
    training = max((ended or now) - began, 0.0) if began else None
    until = began or (status.get("finished_at") if final else now)
    prepare = max(until - launched, 0.0) if launched and until else None
    return prepare, training


def config_diff(configs: dict[str, dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Fields whose values differ between runs: [(field, [value per run in the given order])]."""
    names: list[str] = []
    for config in configs.values():
        names += [k for k in config if k not in names and k != "output_dir"]
    rows = []
    for name in names:
        values = [config.get(name) for config in configs.values()]
        if any(v != values[0] for v in values[1:]):
            rows.append((name, values))
    return rows


class RunHistory:
    """The runs under one folder, with cached incremental metrics (shared by every page of the studio)."""

    def __init__(self, runs_dir: str | Path):
        self.runs_dir = Path(runs_dir).resolve()
        self._metrics: dict[str, RunMetrics] = {}
        self._configs: dict[str, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def runs(self) -> list[RunDir]:
        """Run directories, newest first."""
        return list_runs(self.runs_dir)

    def resolve(self, run_id_or_path: str | Path) -> RunDir:
        """A run by id (folder name under runs_dir) or path; ValueError if there is no such run."""
        path = Path(run_id_or_path)
        run = RunDir(path if path.is_absolute() else self.runs_dir / path)
        if not run.exists():
            raise ValueError(f"no run {str(run_id_or_path)!r} in {self.runs_dir}")
        return run

    def metrics(self, run: RunDir, refresh: bool = True) -> RunMetrics:
        """The run's metrics, read forward from where the last call stopped."""
        key = str(run.path.resolve())
        with self._lock:
            metrics = self._metrics.get(key)
            if metrics is None:
                metrics = self._metrics[key] = RunMetrics(RunDir(key))
            if refresh:
                metrics.refresh()
        return metrics

    def summaries(self) -> list[dict[str, Any]]:
        """A summary per run, newest first."""
        return [summarize(run, self.metrics(run), self.config(run)) for run in self.runs()]

    def config(self, run: RunDir) -> dict[str, Any]:
        """The run's config.yaml as a mapping (parsed again only when the file changes)."""
        try:
            stamp = run.config_file.stat().st_mtime_ns
        except OSError:
            return {}
        key = str(run.path.resolve())
        cached = self._configs.get(key)
        if cached is None or cached[0] != stamp:
            cached = self._configs[key] = (stamp, _read_config(run))
        return cached[1]

    def configs(self, runs: list[RunDir]) -> dict[str, dict[str, Any]]:
        """run id -> its resolved config as a mapping."""
        return {run.run_id: self.config(run) for run in runs}

    def delete(self, run: RunDir) -> None:
        """Delete a run's folder; ValueError while its trainer still runs."""
        if group_alive(run.status().get("pgid")):
            raise ValueError(f"{run.run_id} is still running: stop it before deleting")
        if run.path.resolve().parent != self.runs_dir:
            raise ValueError(f"{run.path} is not inside {self.runs_dir}")
        with self._lock:
            self._metrics.pop(str(run.path.resolve()), None)
            self._configs.pop(str(run.path.resolve()), None)
        shutil.rmtree(run.path)
