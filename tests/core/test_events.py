"""Events are appended as versioned JSON lines and read incrementally from a byte offset."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.core.events import EventTail, EventWriter
from tunelab.core.rundir import RunDir


def test_tail_reads_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer, tail = EventWriter(path), EventTail(path)
    assert tail.read_new() == []
    writer.write("train", step=1, loss=2.0)
    first = tail.read_new()
    assert [e["step"] for e in first] == [1] and first[0]["v"] == 1
    offset = tail.offset
    with path.open("a") as handle:  # a writer caught mid-line
        handle.write('{"v": 1, "type": "train", "step": 2')
    assert tail.read_new() == [] and tail.offset > offset
    with path.open("a") as handle:
        handle.write(', "loss": 1.5}\n')
    assert [e["step"] for e in tail.read_new()] == [2]


def test_status_is_replaced_atomically(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.set_status("queued", run_id="x")
    run.set_status("running")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "running" and status["run_id"] == "x" and status["pid"] > 0
    assert not list(tmp_path.glob(".status.json*")), "no temporary files left behind"
