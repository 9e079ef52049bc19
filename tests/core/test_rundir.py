"""Run ids never collide: concurrent creations in the same second (threads and processes) get distinct folders."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunelab.core import rundir
from tunelab.core.config import RunConfig
from tunelab.core.rundir import RunDir, create_run


def _frozen_id(config: RunConfig) -> str:
    """Every creation lands in the same second."""
    return f"20260101-000000-demo-{config.method}-{config.stage}"


def _create_in_process(parent: str) -> str:
    """Child-process body: create one run under ``parent`` with the clock frozen."""
    rundir.new_run_id = _frozen_id
    return str(create_run(RunConfig(), parent).path)


def test_threads_and_processes_get_distinct_run_dirs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(rundir, "new_run_id", _frozen_id)
    with ThreadPoolExecutor(16) as pool:
        threaded = list(pool.map(lambda _: str(create_run(RunConfig(), tmp_path).path), range(48)))
    with multiprocessing.get_context("fork").Pool(4) as pool:
        forked = pool.map(_create_in_process, [str(tmp_path)] * 24)
    paths = threaded + forked
    assert len(set(paths)) == len(paths) == 72
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in paths)
    for path in paths:
        run = RunDir(path)
        assert run.config().output_dir == path  # each config points at its own folder
        assert run.status()["state"] == "queued" and run.status()["run_id"] == run.run_id


def test_rerun_of_finished_config_goes_beside_it_and_resume_reuses(tmp_path: Path) -> None:
    first = create_run(RunConfig(output_dir=str(tmp_path / "r1")))
    again = create_run(first.config())
    assert again.path != first.path and again.path.parent == tmp_path
    resumed = create_run(first.config().model_copy(update={"resume": True}))
    assert resumed.path == first.path
