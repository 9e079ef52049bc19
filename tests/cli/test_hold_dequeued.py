"""`tunelab chat` and `tunelab api` whose GPU hold leaves the queue before it starts (stopped from elsewhere, e.g.
the studio's Stop): one line on stderr and exit 2, no traceback. No GPU exists here: the queue gets a mocked one."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.services import holds
from tunelab.services.gpus import Gpu
from tunelab.services.jobs import JobQueue


@pytest.fixture
def dequeued_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mocked GPU, and every hold dropped from the queue (as Stop does) just before it would wait for it."""
    monkeypatch.setattr(holds, "detect_gpus", lambda: [Gpu("0", "mock")])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unchanged")  # restored after the test, should a hold set it
    original = JobQueue.wait_started

    def stopped_first(self: JobQueue, job, on_wait=None, interval_s: float = 1.0):
        assert self.stop(job.run_dir) == "dequeued"
        return original(self, job, on_wait, interval_s)

    monkeypatch.setattr(JobQueue, "wait_started", stopped_first)


@pytest.mark.parametrize("command", [["chat", "--prompt", "hi"], ["api", "--port", "0"]])
def test_a_dequeued_hold_is_one_line(command: list[str], dequeued_hold: None, tmp_path: Path, capsys) -> None:
    term = signal.getsignal(signal.SIGTERM)  # `tunelab api` sets its own
    try:
        assert main([*command, "--model", "demo", "--runs-dir", str(tmp_path)]) == 2
    finally:
        signal.signal(signal.SIGTERM, term)
    err = capsys.readouterr().err
    assert "left the queue before it started" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert [(j.kind, j.state) for j in JobQueue(tmp_path, gpus=[Gpu("0", "mock")]).jobs()] == [("hold", "finished")]
