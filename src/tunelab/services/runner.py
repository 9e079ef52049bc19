"""Start and stop trainer processes. Each run is its own process group writing only to its run directory,
so the UI or CLI that started it can exit, crash or restart without touching it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunelab.core.config import RunConfig
from tunelab.core.rundir import FINAL_STATES, RunDir, create_run

TRAIN_MODULE = "tunelab.engine.train"


def trainer_command(run: RunDir, module: str = TRAIN_MODULE) -> list[str]:
    """The argv that trains ``run`` (through the launcher: torchrun for several processes) or runs job ``module``."""
    if module == TRAIN_MODULE:
        from tunelab.services.launch import train_argv, write_launch_files

        config = run.config()
        write_launch_files(run, config)
        return train_argv(run, config)
    return [sys.executable, "-m", module, str(run.path)]


def spawn(run: RunDir, env: dict[str, str] | None = None, module: str = TRAIN_MODULE) -> subprocess.Popen:
    """Start the trainer (or job ``module``) for ``run`` in a new session (its own process group), output to its log."""
    with open(run.log_file, "ab") as log:
        process = subprocess.Popen(
            trainer_command(run, module), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **(env or {})}, close_fds=True,
        )
    run.set_status(run.status().get("state", "queued"), pgid=process.pid, launched_at=time.time())
    return process


def start_run(config: RunConfig, parent: str | Path | None = None, env: dict[str, str] | None = None) -> tuple[RunDir, subprocess.Popen]:
    """Create the run directory for ``config`` and start its trainer."""
    run = create_run(config, parent)
    return run, spawn(run, env)


def process_alive(pid: int | None) -> bool:
    """Whether a process (or process group leader) with this pid exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc (Linux)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def group_alive(pgid: int | None) -> bool:
    """Whether any process of the group still runs (zombies awaiting their parent do not count)."""
    if not pgid:
        return False
    if Path("/proc/self/stat").is_file():
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int | None, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to a process group; False when there is no such group."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_run(run: RunDir, grace_s: float = 60.0) -> bool:
    """Ask the run's process group to stop (SIGTERM: finish the step, save); SIGKILL after ``grace_s``.

    Returns True when no process of the group is left.
    """
    pgid = run.status().get("pgid")
    if not group_alive(pgid):
        return True
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    if run.status().get("state") not in FINAL_STATES:
        run.set_status("aborted", message=f"killed after {grace_s:.0f}s without stopping")
    return not group_alive(pgid)


def rank_failure(run: RunDir) -> dict | None:
    """The first error a rank of a multi-process run recorded (logs/rank-N.error.json), or None."""
    errors = []
    for path in run.logs_dir.glob("rank-*.error.json"):
        try:
            errors.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return min(errors, key=lambda e: e.get("time", 0), default=None)


def reconcile(run: RunDir) -> dict:
    """Once the trainer's processes are gone: a run that vanished without a final status (killed, OOM) is failed;
    a multi-process run that did not succeed is failed with the error of the rank that broke first. Returns status."""
    status = run.status()
    if not status.get("pgid") or group_alive(status["pgid"]):
        return status
    first = rank_failure(run) if status.get("state") != "succeeded" else None
    if first is not None and not str(status.get("error", "")).startswith("rank "):
        status = run.set_status("failed", error=f"rank {first.get('rank')}: {first.get('error') or 'failed'}")
    elif status.get("state") in ("running", "queued"):
        status = run.set_status("failed", error="the trainer process ended without reporting (killed or out of memory?)")
    return status
