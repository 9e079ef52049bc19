"""The trainer records its own estimate at start (an ``estimate`` event and status.json's ``estimate``), and a model
config it cannot read leaves a warning, never a failed run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tunelab.core.config import RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.rundir import RunDir
from tunelab.engine.estimate_event import record_estimate
from tunelab.engine.tokenize import EncodeStats


def events(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.events_file.read_text().splitlines()] if run.events_file.exists() else []


def test_the_trainer_recorded_its_estimate(demo_adapter_run: Path) -> None:
    run = RunDir(demo_adapter_run)  # trained through the real CLI once per session
    estimate = [e for e in events(run) if e["type"] == "estimate"]
    assert len(estimate) == 1 and estimate[0]["device"] == "CPU" and estimate[0]["tokens_per_s"] > 0
    assert run.status()["estimate"]["path"] == "none"  # the CPU takes the plain path


def test_an_unreadable_model_config_is_a_warning(tmp_path: Path, tiny_model_dir: Path, caplog) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    stats = EncodeStats(examples=10, kept=10, tokens=5000)
    record_estimate(run, EventWriter(run.events_file), RunConfig(cutoff_len=512), str(tiny_model_dir), stats)
    recorded = [e for e in events(run) if e["type"] == "estimate"]
    assert recorded and recorded[0]["epoch_tokens"] == 5000 and run.status()["estimate"]["fits"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        record_estimate(run, EventWriter(run.events_file), RunConfig(), str(broken), stats)
    assert "estimate skipped" in caplog.text and len([e for e in events(run) if e["type"] == "estimate"]) == 1
