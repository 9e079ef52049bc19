"""A persistent job queue (SQLite) and the scheduler that starts queued runs when their devices are free.

A job is one run directory waiting for (or holding) devices. The queue lives in ``<runs_dir>/.jobs.sqlite``,
so queued and running jobs survive a restart of whatever process schedules them (the web studio). Trainers
are started by ``tunelab.services.runner.spawn``: their own process group, output to train.log, nothing for
the scheduler to drain. With GPUs, each job gets the devices it asked for (or any free ones) through
CUDA_VISIBLE_DEVICES and waits while they are busy; without GPUs one job runs at a time. A job that waits is
told why in its status message (which job holds the devices it needs).

A *hold* is a job the queue does not start: a process that does its own work on GPUs (the Chat tab's model
worker, `tunelab chat`/`api`, an in-process `tunelab export`) queues for them like any job, gets them when they
are free, and keeps them until it releases them or exits (see services.holds).
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.rundir import FINAL_STATES, RunDir
from tunelab.services import runner
from tunelab.services.gpus import Gpu
from tunelab.services.jobstore import ACTIVE, HOLD, Job, JobStore

log = logging.getLogger(__name__)

JOB_MODULES = {"eval": "tunelab.engine.evaluate", "export": "tunelab.engine.export"}  # kinds besides training
WAITING = "waiting for "  # how a waiting job's status message starts
Launcher = Callable[[RunDir, dict[str, str]], subprocess.Popen]


def _default_launcher(run: RunDir, env: dict[str, str]) -> subprocess.Popen:
    return runner.spawn(run, env)


@dataclass
class JobQueue(JobStore):
    """The queue of jobs over one runs folder (training, eval, export, holds), and the scheduler that starts them."""

    runs_dir: Path
    gpus: list[Gpu] = field(default_factory=list)
    launcher: Launcher = _default_launcher
    stop_grace_s: float = 60.0

    def __post_init__(self) -> None:
        JobStore.__init__(self, self.runs_dir)
        self._lock = threading.RLock()
        self._children: dict[int, subprocess.Popen] = {}
        self._stopping: dict[str, threading.Thread] = {}
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()

    # -- public operations ---------------------------------------------------------------------------------
    def submit(self, run: RunDir, devices: list[str] | None = None, gpu_count: int = 1, kind: str | None = None) -> Job:
        """Queue a run (created with core.rundir.create_run), or an eval/export job folder (``kind``); ValueError
        if it is already queued or running."""
        path = str(run.path.resolve())
        processes = run.config().nproc_per_node if kind is None and run.exists() else 1
        gpu_count = max(gpu_count, processes)  # one GPU per process of a multi-process run
        self.check_request(devices, gpu_count, processes)
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            busy = db.execute("SELECT id FROM jobs WHERE run_dir = ? AND state IN ('queued','running')", (path,)).fetchone()
            if busy:
                db.execute("ROLLBACK")
                raise ValueError(f"run {run.run_id} is already queued or running")
            cursor = db.execute(
                "INSERT INTO jobs (run_dir, state, want_devices, gpu_count, devices, created_at, kind) VALUES (?,?,?,?,?,?,?)",
                (path, "queued", json.dumps(list(devices or [])), max(gpu_count, 1), "[]", time.time(), kind),
            )
            db.execute("COMMIT")
            job_id = int(cursor.lastrowid or 0)
        if run.status().get("state") != "queued":
            run.set_status("queued", run_id=run.run_id)
        log.info("queued %s (job %s)", run.run_id, job_id)
        return self._get(job_id)

    def hold(self, label: str, pid: int, gpu_count: int = 1) -> Job:
        """Queue a hold of ``gpu_count`` GPUs for process ``pid``, which does its own work on them; it keeps them
        until ``release`` or until that process ends. ``label`` is what jobs waiting for them are told."""
        self.check_request(None, gpu_count)
        path = self.runs_dir / ".holds" / f"{pid}-{time.time_ns()}"  # a key, never created on disk
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO jobs (run_dir, state, want_devices, gpu_count, devices, pgid, created_at, kind, label) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (str(path), "queued", "[]", max(gpu_count, 1), "[]", pid, time.time(), HOLD, label),
            )
        log.info("queued a hold for %s (job %s)", label, cursor.lastrowid)
        return self._get(int(cursor.lastrowid or 0))

    def check_request(self, devices: list[str] | None = None, gpu_count: int = 1, processes: int = 1) -> None:
        """ValueError naming the problem when the devices asked for do not exist or do not match the processes."""
        known = {gpu.index for gpu in self.gpus}
        unknown = [d for d in devices or [] if d not in known]
        if unknown:
            valid = ", ".join(sorted(known)) or "none (no CUDA device found)"
            raise ValueError(f"devices: {', '.join(unknown)} not found; valid: {valid}")
        if devices and len(devices) != processes:
            hint = "set strategy (ddp, fsdp2, deepspeed_zero2, deepspeed_zero3) and " if processes == 1 else ""
            raise ValueError(
                f"devices: {len(devices)} GPU(s) picked for {processes} process(es); {hint}nproc_per_node = {len(devices)}, "
                f"or pick {processes} GPU(s)"
            )
        if self.gpus and not devices and gpu_count > len(self.gpus):
            raise ValueError(f"gpu_count: {gpu_count} GPUs asked for, {len(self.gpus)} present")

    def stop(self, run_dir: str | Path) -> str:
        """Stop a run: drop it from the queue, or signal its process group. Returns what happened:
        'dequeued', 'stopping' (the trainer saves and ends as aborted) or 'idle' (nothing to stop)."""
        job = self.job_for(run_dir)
        if job is None or job.state == "finished":
            return "idle"
        if job.state == "queued":
            with self._connect() as db:
                claimed = db.execute(
                    "UPDATE jobs SET state='finished', result='aborted', finished_at=? WHERE id=? AND state='queued'",
                    (time.time(), job.id),
                ).rowcount
            if claimed:
                job.run.set_status("aborted", message="removed from the queue before it started")
                return "dequeued"
            job = self.job_for(run_dir) or job
        with self._lock:
            worker = self._stopping.get(job.run_dir)
            if worker is None or not worker.is_alive():
                worker = threading.Thread(target=self._stop_job, args=(job,), name=f"stop-{job.id}", daemon=True)
                self._stopping[job.run_dir] = worker
                worker.start()
        return "stopping"

    def stopping(self, run_dir: str | Path) -> bool:
        """Whether a stop of this run is in progress."""
        worker = self._stopping.get(str(Path(run_dir).resolve()))
        return bool(worker and worker.is_alive())

    def run_when_free(
        self, run: RunDir, kind: str | None = None, on_wait: Callable[[str], None] | None = None, interval_s: float = 1.0
    ) -> Any:
        """Queue ``run`` and block until it has started (here, or by another scheduler on this folder, e.g. the
        studio); returns its process (a Popen, or a runner.GroupHandle). ``on_wait`` gets the reason it waits
        whenever that changes. KeyboardInterrupt while waiting dequeues it; ValueError if it leaves the queue first."""
        job = self.submit(run, kind=kind)
        try:
            job = self.wait_started(job, on_wait, interval_s)
        except KeyboardInterrupt:
            self.stop(run.path)
            raise
        return self.process(job.id) or runner.GroupHandle(job.pgid or 0)

    def wait_started(self, job: Job, on_wait: Callable[[str], None] | None = None, interval_s: float = 1.0) -> Job:
        """Schedule (poll) until ``job`` runs, then return it; ``on_wait`` gets the reason it waits whenever that
        changes. ValueError if it leaves the queue before it starts."""
        told = None
        while True:
            self.poll()
            current = self._get(job.id)
            if current.state == "running" and current.pgid:
                return current
            if current.state == "finished":
                message = "" if current.kind == HOLD else current.run.status().get("message", "")
                raise ValueError(f"{current.describe()} left the queue before it started ({message or current.result})")
            reason = self.waiting_reason(current)
            if on_wait and current.state == "queued" and reason != told:
                on_wait(reason)
                told = reason
            time.sleep(interval_s)

    def waiting_reason(self, job: Job) -> str:
        """Why a queued job has not started yet: which jobs hold what it needs."""
        running = [other for other in self.jobs(("running",)) if other.id != job.id]
        if not self.gpus:
            ahead = running[0].describe() if running else "the job ahead"
            return f"{WAITING}{ahead} to finish (without a GPU one job runs at a time)"
        holders = {device: other for other in running for device in other.devices}
        if job.want_devices:
            wanted, busy = "GPU " + ",".join(job.want_devices), [d for d in job.want_devices if d in holders]
        else:
            wanted = f"{job.gpu_count} free GPU{'s' if job.gpu_count > 1 else ''}"
            busy = [gpu.index for gpu in self.gpus if gpu.index in holders]
        held = "; ".join(f"GPU {device} is held by {holders[device].describe()}" for device in busy)
        return f"{WAITING}{wanted}" + (f": {held}" if held else "")

    def process(self, job_id: int) -> subprocess.Popen | None:
        """The launcher process of a job this queue started (None if another scheduler started it)."""
        return self._children.get(job_id)

    def _stop_job(self, job: Job) -> None:
        runner.stop_run(job.run, grace_s=self.stop_grace_s)
        self.poll()

    def settle(self, run_dir: str | Path, wait_s: float = 20.0) -> Job | None:
        """The run's newest job, once a trainer that already reported its end has exited (up to ``wait_s``)."""
        job = self.job_for(run_dir)
        if job and job.state == "running" and job.run.status().get("state") in FINAL_STATES:
            deadline = time.time() + wait_s
            while job is not None and job.state == "running" and time.time() < deadline:
                time.sleep(0.2)
                self.poll()  # reaps it once it has fully exited (all its threads, not only the leader)
                job = self.job_for(run_dir)
        return job

    def active(self, run_dir: str | Path) -> bool:
        """Whether the run is queued or running (a trainer on its way out does not count)."""
        job = self.settle(run_dir)
        return job is not None and job.state in ACTIVE

    def forget(self, run_dir: str | Path) -> None:
        """Remove a run's finished jobs (when the run directory is deleted); ValueError while it is active."""
        path = str(Path(run_dir).resolve())
        self.settle(path)
        with self._connect() as db:
            if db.execute("SELECT id FROM jobs WHERE run_dir=? AND state IN ('queued','running')", (path,)).fetchone():
                raise ValueError(f"{Path(path).name} is queued or running: stop it first")
            db.execute("DELETE FROM jobs WHERE run_dir = ?", (path,))

    # -- scheduling ----------------------------------------------------------------------------------------
    def poll(self) -> list[Job]:
        """Reap finished jobs and start queued ones whose devices are free; returns the jobs started."""
        with self._lock:
            self._reap()
            return self._start_ready()

    def _reap(self) -> None:
        for job_id, process in list(self._children.items()):
            if process.poll() is not None:
                del self._children[job_id]
        for job in self.jobs(ACTIVE):
            if job.kind == HOLD and not runner.pid_running(job.pgid):  # its process ended without releasing it
                self.release(job.id)
        for job in self.jobs(("running",)):
            if job.kind == HOLD:
                continue
            if job.id in self._children or runner.group_alive(job.pgid):
                continue
            if job.pgid is None and time.time() - (job.started_at or 0) < 30:
                continue  # another scheduler is launching it right now
            status = runner.reconcile(job.run)
            state = status.get("state")
            if state not in FINAL_STATES:  # ended before it ever wrote a status
                state = job.run.set_status("failed", error="the trainer exited without reporting").get("state")
            self._update(job.id, state="finished", result=state, finished_at=time.time())
            log.info("job %s (%s) finished: %s", job.id, job.run.run_id, state)

    def _free_devices(self) -> list[str]:
        busy = {d for job in self.jobs(("running",)) for d in job.devices}
        return [gpu.index for gpu in self.gpus if gpu.index not in busy]

    def _start_ready(self) -> list[Job]:
        started = []
        for job in self.jobs(("queued",)):
            if self.gpus:
                free = self._free_devices()
                if job.want_devices:
                    devices = job.want_devices if set(job.want_devices) <= set(free) else None
                else:
                    devices = free[: job.gpu_count] if len(free) >= job.gpu_count else None
            else:
                devices = None if self.jobs(("running",)) else []  # CPU: one job at a time, in order
            if devices is not None and self._launch(job, devices):
                started.append(job)
            elif job.kind != HOLD and self._get(job.id).state == "queued":
                self._tell_waiting(job)  # a later job may still fit on other devices
        return started

    def _tell_waiting(self, job: Job) -> None:
        """Put why the job waits into its status message (when that changed)."""
        status = job.run.status()
        reason = self.waiting_reason(job)
        if job.run.path.is_dir() and status.get("state") == "queued" and status.get("message") != reason:
            job.run.set_status("queued", message=reason)

    def _launch(self, job: Job, devices: list[str]) -> bool:
        if not self.claim(job.id, devices, exclusive=not self.gpus):
            return False  # another scheduler took it or its devices, or it was stopped meanwhile
        if job.kind == HOLD:
            log.info("hold for %s (job %s) got devices %s", job.label, job.id, devices)
            return True  # its own process does the work
        env = {"CUDA_VISIBLE_DEVICES": ",".join(devices)} if self.gpus else {}
        try:
            if job.kind:
                from tunelab.core.jobs import JobDir

                process = runner.spawn(JobDir(job.run_dir, job.kind), env, module=JOB_MODULES[job.kind])
            else:
                process = self.launcher(job.run, env)
        except OSError as exc:
            job.run.set_status("failed", error=f"could not start the trainer: {exc}")
            self._update(job.id, state="finished", result="failed", finished_at=time.time())
            return False
        self._children[job.id] = process
        self._update(job.id, pgid=process.pid)
        status = job.run.status()
        waited = {"message": ""} if str(status.get("message", "")).startswith(WAITING) else {}
        job.run.set_status(status.get("state", "queued"), devices=devices, **waited)
        log.info("started %s (job %s, pgid %s, devices %s)", job.run.run_id, job.id, process.pid, devices or "cpu")
        return True

    def start_background(self, interval_s: float = 1.0) -> None:
        """Poll in a daemon thread every ``interval_s`` seconds (idempotent)."""
        if self._thread and self._thread.is_alive():
            return
        self._halt.clear()

        def loop() -> None:
            while not self._halt.is_set():
                try:
                    self.poll()
                except Exception:  # keep scheduling; the error is in the log
                    log.exception("job scheduler poll failed")
                self._halt.wait(interval_s)

        self._thread = threading.Thread(target=loop, name="tunelab-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background scheduler (running trainers are left alone)."""
        self._halt.set()
        if self._thread:
            self._thread.join(timeout=5)
