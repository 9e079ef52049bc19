"""Export/eval options and model sources: every bad input gives one line naming the option and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.core.config import ConfigError, RunConfig, dump_config
from tunelab.core.eval_config import validate_eval_config
from tunelab.core.export_config import parse_size, validate_export_config
from tunelab.core.jobs import JobDir, create_job, list_jobs
from tunelab.core.rundir import list_runs
from tunelab.core.sources import SourceError, resolve_source


def test_sizes() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500 MiB") == 500 * 2**20 and parse_size("123") == 123
    with pytest.raises(ValueError, match="5GB"):
        parse_size("big")


def test_export_options_are_validated() -> None:
    assert validate_export_config({"run": "r", "gguf": "Q8_0"}).gguf == "q8_0"
    with pytest.raises(ConfigError, match=r"gguf: 'q4_k' is not valid; valid choices: q8_0, f16, f32"):
        validate_export_config({"run": "r", "gguf": "q4_k"})
    with pytest.raises(ConfigError, match="out: give an output folder"):
        validate_export_config({"adapter": "a"})
    with pytest.raises(ConfigError, match="either run or model/adapter"):
        validate_export_config({"run": "r", "model": "m"})


def test_eval_options_are_validated() -> None:
    cfg = validate_eval_config({"run": "r", "metrics": "loss, predict", "tasks": "a.yaml,b"})
    assert cfg.metrics == ["loss", "predict"] and cfg.tasks == ["a.yaml", "b"]
    with pytest.raises(ConfigError, match="max_sample: unknown field; did you mean max_samples"):
        validate_eval_config({"run": "r", "max_sample": 3})
    with pytest.raises(ConfigError, match="tasks: 'bench' needs"):
        validate_eval_config({"run": "r", "metrics": ["bench"]})
    with pytest.raises(ConfigError, match="dataset: give a dataset"):
        validate_eval_config({"model": "demo"})


def test_sources(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SourceError, match="not a run directory"):
        resolve_source(run=str(run))
    (run / "config.yaml").write_text(dump_config(RunConfig(model="demo")))
    (run / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(SourceError, match=r"no saved adapter or model yet \(state: running\)"):
        resolve_source(run=str(run))
    adapter = run / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    source = resolve_source(run=str(run))
    assert source.adapter == adapter and source.model == "demo" and source.label == "run"
    bare = resolve_source(adapter=str(adapter))
    assert bare.model == "/models/base" and bare.run is None
    with pytest.raises(SourceError, match="not a PEFT adapter folder"):
        resolve_source(adapter=str(tmp_path))


def test_job_folders_never_pass_for_runs(tmp_path: Path) -> None:
    job = create_job("eval", {"run": "x"}, tmp_path, "my run")
    assert isinstance(job, JobDir) and job.config_file.name == "eval.yaml" and job.status()["state"] == "queued"
    assert list_jobs(tmp_path, "eval")[0].path == job.path and list_jobs(tmp_path, "export") == []
    assert list_runs(tmp_path) == []
