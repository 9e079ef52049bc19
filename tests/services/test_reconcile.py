"""How a multi-process run's final state is settled once its processes are gone (services/runner.reconcile).

Real processes and files: the run's process group is a real, finished one; rank errors are the files the ranks
write (logs/rank-N.error.json); Stop's marker is the file stop_run writes before it signals."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tunelab.core.rundir import RunDir
from tunelab.services.runner import reconcile, stop_requested_at, stop_run


def finished_run(tmp_path: Path, state: str, **fields: object) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    done = subprocess.Popen(["true"], start_new_session=True)
    done.wait()
    run.set_status(state, pgid=done.pid, **fields)
    return run


def rank_error(run: RunDir, rank: int, at: float, error: str) -> None:
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    (run.logs_dir / f"rank-{rank}.error.json").write_text(json.dumps({"rank": rank, "time": at, "error": error}))


def stop_marker(run: RunDir, at: float) -> None:
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    (run.logs_dir / "stop-requested").write_text(f"{at}\n")


READ_ERROR = "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:41234: Connection reset by peer"


@pytest.mark.parametrize("rank0", ["aborted", "failed"])
def test_a_rank_that_breaks_after_stop_leaves_the_run_aborted(tmp_path: Path, rank0: str) -> None:
    fields = {"message": "stopped by SIGTERM; checkpoint saved"} if rank0 == "aborted" else {"error": "rank 0: boom"}
    run = finished_run(tmp_path, rank0, **fields)
    stop_marker(run, 100.0)
    rank_error(run, 1, 101.0, READ_ERROR)
    status = reconcile(run)
    assert status["state"] == "aborted", status
    assert status["rank_note"] == f"rank 1: {READ_ERROR}"
    assert not status.get("error")
    expected = "stopped by SIGTERM; checkpoint saved" if rank0 == "aborted" else "stopped (Stop); a rank broke while stopping"
    assert status["message"] == expected
    assert reconcile(run) == run.status(), "settled once: a second look changes nothing"


def test_a_rank_that_broke_before_stop_fails_the_run_naming_it(tmp_path: Path) -> None:
    run = finished_run(tmp_path, "aborted", message="stopped by SIGTERM")
    rank_error(run, 1, 99.0, "RuntimeError: CUDA error: an illegal memory access was encountered")
    stop_marker(run, 100.0)
    status = reconcile(run)
    assert status["state"] == "failed"
    assert status["error"] == "rank 1: RuntimeError: CUDA error: an illegal memory access was encountered"


def test_without_stop_a_broken_rank_fails_the_run(tmp_path: Path) -> None:
    run = finished_run(tmp_path, "aborted", message="stopped by SIGTERM")
    rank_error(run, 1, 101.0, READ_ERROR)
    assert stop_requested_at(run) is None
    status = reconcile(run)
    assert status["state"] == "failed" and status["error"] == f"rank 1: {READ_ERROR}"


def test_stop_leaves_its_marker_before_it_signals(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    run.set_status("running", pgid=sleeper.pid)
    before = time.time()
    assert stop_run(run, grace_s=10)
    sleeper.wait(timeout=10)
    assert sleeper.returncode == -15, "SIGTERM reached the group"
    at = stop_requested_at(run)
    assert at is not None and before <= at <= time.time()
