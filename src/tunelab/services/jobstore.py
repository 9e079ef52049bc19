"""The jobs table of a runs folder (SQLite, ``<runs_dir>/.jobs.sqlite``): one row per job, read and written by
every scheduler on that folder (the studio, `tunelab train`, a chat worker waiting for a GPU)."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.core.rundir import RunDir

DB_NAME = ".jobs.sqlite"
HOLD = "hold"  # the kind of a job that only holds devices for a process of its own (pgid: that process's pid)
ACTIVE = ("queued", "running")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_dir TEXT NOT NULL,
    state TEXT NOT NULL,            -- queued | running | finished
    want_devices TEXT NOT NULL,     -- JSON list of device ids asked for ([] = any)
    gpu_count INTEGER NOT NULL,     -- how many devices when any will do
    devices TEXT NOT NULL,          -- JSON list of device ids assigned
    pgid INTEGER,
    result TEXT,                    -- the run's final state once finished
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    kind TEXT,                      -- NULL: training; eval | export: a job on a GPU that is not training; hold
    label TEXT                      -- hold: who holds the devices, as jobs waiting for them are told
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


@dataclass
class Job:
    """One row of the queue."""

    id: int
    run_dir: str
    state: str
    want_devices: list[str]
    gpu_count: int
    devices: list[str]
    pgid: int | None
    result: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    kind: str | None = None
    label: str | None = None

    @property
    def run(self) -> RunDir:
        """The job's run directory."""
        return RunDir(self.run_dir)

    def describe(self) -> str:
        """What the job is, for a message to a job that waits for it: 'run <id>', 'eval job <id>', a hold's label."""
        if self.kind == HOLD:
            return self.label or f"process {self.pgid}"
        return f"{self.kind} job {self.run.run_id}" if self.kind else f"run {self.run.run_id}"


class JobStore:
    """Rows of the jobs table of one runs folder."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.runs_dir / DB_NAME
        with self._connect() as db:
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for column in ("kind", "label"):  # a queue from before kinds or holds
                if column not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        for key in ("want_devices", "devices"):
            data[key] = json.loads(data[key])
        return Job(**data)

    def jobs(self, states: tuple[str, ...] | None = None) -> list[Job]:
        """Jobs (oldest first), optionally only those in ``states``."""
        with self._connect() as db:
            if states:
                marks = ",".join("?" * len(states))
                rows = db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states).fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return [self._job(r) for r in rows]

    def _get(self, job_id: int) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:  # forgotten meanwhile (e.g. its run deleted)
            raise ValueError(f"job {job_id} left the queue")
        return self._job(row)

    def job_for(self, run_dir: str | Path) -> Job | None:
        """The newest job of a run directory."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE run_dir = ? ORDER BY id DESC LIMIT 1", (str(Path(run_dir).resolve()),)
            ).fetchone()
        return self._job(row) if row else None

    def _update(self, job_id: int, **fields: Any) -> None:
        fields = {k: json.dumps(v) if k in ("devices", "want_devices") else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def release(self, job_id: int) -> None:
        """End a hold (or dequeue it): its devices are free for the next job."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET state='finished', result='released', finished_at=? WHERE id=? AND state IN "
                       "('queued','running')", (time.time(), job_id))

    def claim(self, job_id: int, devices: list[str], exclusive: bool = False) -> bool:
        """Mark a queued job running on ``devices`` if no running job holds any of them (one transaction, so two
        schedulers on this folder never hand out one device twice); ``exclusive``: only if nothing runs."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            running = [json.loads(row[0]) for row in db.execute("SELECT devices FROM jobs WHERE state = 'running'")]
            if (set(devices) & {d for held in running for d in held}) or (exclusive and running):
                db.execute("ROLLBACK")
                return False
            claimed = db.execute(
                "UPDATE jobs SET state='running', devices=?, started_at=? WHERE id=? AND state='queued'",
                (json.dumps(devices), time.time(), job_id),
            ).rowcount
            db.execute("COMMIT")
        return bool(claimed)
