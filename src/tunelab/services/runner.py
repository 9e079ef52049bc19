"""Start and stop trainer processes. Each run is its own process group writing only to its run directory,
so the UI or CLI that started it can exit, crash or restart without touching it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunelab.core.config import RunConfig
from tunelab.core.files import write_atomic
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


def _stat_fields(proc_dir: Path) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: state first, then ppid, pgrp, ... (OSError, IndexError)."""
    return (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()


def pid_running(pid: int | None) -> bool:
    """Whether a process runs (a zombie awaiting its parent does not count)."""
    if not pid:
        return False
    try:
        state = _stat_fields(Path(f"/proc/{pid}"))[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc (not Linux)
        return process_alive(pid)
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc (Linux)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
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


class GroupHandle:
    """A job process started by another scheduler, watched through its process group (poll/wait like Popen)."""

    def __init__(self, pgid: int):
        self.pid = pgid

    def poll(self) -> int | None:
        """None while any process of the group runs, else 0 (its status.json says how it ended)."""
        return None if group_alive(self.pid) else 0

    def wait(self, timeout: float | None = None) -> int:
        """Block until the group has ended."""
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(f"process group {self.pid}", timeout or 0.0)
            time.sleep(0.2)
        return 0


def rank_processes(run: RunDir) -> list[int]:
    """Live rank processes of a multi-process run (torchrun starts each rank in its own session)."""
    alive = []
    for path in run.logs_dir.glob("rank-*.pid"):
        try:
            pid = int(path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if str(run.path).encode() in cmdline and process_alive(pid):
            alive.append(pid)
    return alive


def _kill_ranks(run: RunDir) -> None:
    for pid in rank_processes(run):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop_run(run: RunDir, grace_s: float = 60.0) -> bool:
    """Ask the run's process group to stop (SIGTERM: finish the step, save); SIGKILL after ``grace_s``.
    torchrun forwards the signal to every rank; a rank still alive once its launcher is gone is killed.

    Returns True when no process of the run is left.
    """
    pgid = run.status().get("pgid")
    if not pgid or not group_alive(pgid):
        _kill_ranks(run)
        return True
    write_atomic(_stop_marker(run), f"{time.time()}\n")  # a file of its own: the trainer rewrites status.json
    os.killpg(int(pgid), signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if not group_alive(pgid):
            _kill_ranks(run)
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pgid), signal.SIGKILL)
    _kill_ranks(run)
    if run.status().get("state") not in FINAL_STATES:
        run.set_status("aborted", message=f"killed after {grace_s:.0f}s without stopping")
    return not group_alive(pgid) and not rank_processes(run)


_TORCHRUN_FAILURE = re.compile(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


def _signalled_rank(run: RunDir) -> dict | None:
    """A rank that torchrun reports killed by a signal it did not send itself (SIGKILL by the OOM killer, SIGSEGV)."""
    try:
        with run.log_file.open("rb") as handle:
            handle.seek(max(run.log_file.stat().st_size - 32768, 0))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    for rank, code in _TORCHRUN_FAILURE.findall(tail):
        if int(code) < 0 and -int(code) not in (signal.SIGTERM, signal.SIGINT):
            name = signal.Signals(-int(code)).name
            return {"rank": int(rank), "error": f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")}
    return None


def rank_failure(run: RunDir) -> dict | None:
    """Which rank broke a multi-process run: one torchrun saw killed by a signal, else the first error a rank
    recorded (logs/rank-N.error.json); None when no rank failed."""
    killed = _signalled_rank(run)
    if killed is not None:
        return killed
    errors = []
    for path in run.logs_dir.glob("rank-*.error.json"):
        try:
            errors.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return min(errors, key=lambda e: e.get("time", 0), default=None)


def _stop_marker(run: RunDir) -> Path:
    return run.logs_dir / "stop-requested"


def stop_requested_at(run: RunDir) -> float | None:
    """When Stop (stop_run) signalled the run, or None."""
    try:
        return float(_stop_marker(run).read_text().strip())
    except (OSError, ValueError):
        return None


def _rank_error(failure: dict) -> str:
    return f"rank {failure.get('rank')}: {failure.get('error') or 'failed'}"


def reconcile(run: RunDir) -> dict:
    """Once the trainer's processes are gone: a run that vanished without a final status (killed, OOM) is failed;
    a multi-process run that did not succeed is failed with the error of the rank that broke first, unless that
    rank broke after Stop was asked: ranks leaving one by one can break the collective of a rank still finishing
    (a peer's socket closes under it), and the run is then aborted with that error noted. Returns status."""
    status = run.status()
    if not status.get("pgid") or group_alive(status["pgid"]):
        return status
    first = rank_failure(run) if status.get("state") != "succeeded" else None
    stopped = stop_requested_at(run)
    if first is not None and stopped is not None and first.get("time", stopped) >= stopped:
        note = _rank_error(first)
        if status.get("rank_note") != note:  # set together with "aborted": once
            message = status.get("message") if status.get("state") == "aborted" else "stopped (Stop); a rank broke while stopping"
            status = run.set_status("aborted", message=message, rank_note=note, error=None)
    elif first is not None and not str(status.get("error", "")).startswith("rank "):
        status = run.set_status("failed", error=_rank_error(first))
    elif status.get("state") in ("running", "queued"):
        status = run.set_status("failed", error="the trainer process ended without reporting (killed or out of memory?)")
    return status
