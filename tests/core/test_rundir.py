"""Run directories: two runs created in the same second never share a directory."""

from __future__ import annotations

from pathlib import Path

from tunelab.core.config import RunConfig
from tunelab.core.rundir import create_run


def test_runs_created_in_one_second_get_their_own_directories(tmp_path: Path) -> None:
    config = RunConfig(dataset=["identity"], max_steps=3)
    runs = [create_run(config, tmp_path) for _ in range(3)]  # well inside one second: same time stamp
    assert len({r.path for r in runs}) == 3
    assert all(r.config().max_steps == 3 and r.status()["state"] == "queued" for r in runs)
    assert runs[1].run_id == f"{runs[0].run_id}-2"
