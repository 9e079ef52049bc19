"""Run history: incremental tails (only appended bytes are read), summaries, smoothing and config diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.core.config import RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.rundir import create_run
from tunelab.services.history import LogTail, RunHistory, config_diff, smooth


def test_metrics_are_read_forward_from_the_last_offset(tmp_path: Path) -> None:
    run = create_run(RunConfig(output_dir=str(tmp_path / "r1"), dataset=["identity", "alpaca_demo"]))
    writer = EventWriter(run.events_file)
    history = RunHistory(tmp_path)
    for step, loss in ((1, 3.0), (2, 2.0)):
        writer.write("train", step=step, total_steps=4, loss=loss, lr=1e-3)
    metrics = history.metrics(run)
    assert [e["step"] for e in metrics.train] == [1, 2]
    offset = metrics.events.offset
    assert offset == run.events_file.stat().st_size
    # a half-written line is not parsed until it is complete
    with run.events_file.open("a") as handle:
        handle.write('{"v": 1, "type": "train", "step": 3, "total_steps": 4, "loss": 1.5')
    assert not history.metrics(run).refresh()
    with run.events_file.open("a") as handle:
        handle.write("}\n")
    writer.write("eval", step=3, eval_loss=1.8)
    metrics = history.metrics(run)
    assert [e["step"] for e in metrics.train] == [1, 2, 3] and metrics.eval[0]["eval_loss"] == 1.8
    run.set_status("running", launched_at=100.0, started_at=101.0, train_started_at=130.0)
    [row] = history.summaries()
    assert row["prepare_s"] == 30.0 and row["duration_s"] > 1e6  # training since 130 (epoch seconds), still running
    run.set_status("succeeded", train_finished_at=160.0)
    [row] = history.summaries()
    assert row["run_id"] == "r1" and row["state"] == "succeeded" and row["datasets"] == "identity, alpaca_demo"
    assert (row["step"], row["total_steps"], row["final_loss"], row["best_loss"], row["best_is_eval"]) == (3, 4, 1.5, 1.8, True)
    assert (row["prepare_s"], row["duration_s"]) == (30.0, 30.0)  # the run's duration counts training only


def test_log_tail_keeps_the_last_lines_and_survives_truncation(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    tail = LogTail(log)
    assert tail.read_new() == 500
    assert tail.text(3) == "line 497\nline 498\nline 499"
    with log.open("a") as handle:
        handle.write("partial")
    tail.read_new()
    assert tail.text(2) == "line 499\npartial"
    log.write_text("fresh\n")
    tail.read_new()
    assert tail.text(5) == "fresh"


def test_smoothing_is_the_debiased_moving_average() -> None:
    assert smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    values = smooth([4.0, 4.0, 4.0], 0.9)
    assert values == pytest.approx([4.0, 4.0, 4.0])  # debiased: no pull towards zero at the start
    noisy = smooth([1.0, 3.0] * 20, 0.9)
    assert max(noisy[-10:]) - min(noisy[-10:]) < 0.5
    with pytest.raises(ValueError):
        smooth([1.0], 1.0)


def test_config_diff_lists_only_differing_fields() -> None:
    diff = config_diff({
        "a": {"model": "demo", "learning_rate": 1e-3, "dataset": ["identity"], "output_dir": "/x/a"},
        "b": {"model": "demo", "learning_rate": 2e-4, "dataset": ["identity"], "output_dir": "/x/b"},
    })
    assert diff == [("learning_rate", [1e-3, 2e-4])]


def test_delete_refuses_a_live_run_and_removes_a_finished_one(tmp_path: Path) -> None:
    import os

    history = RunHistory(tmp_path)
    run = create_run(RunConfig(output_dir=str(tmp_path / "live")))
    run.set_status("running", pgid=os.getpgid(0))  # this test's own process group is certainly alive
    with pytest.raises(ValueError, match="still running"):
        history.delete(run)
    run.set_status("aborted", pgid=None)
    history.delete(run)
    assert not run.path.exists() and history.runs() == []
