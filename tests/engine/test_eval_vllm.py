"""Eval and export on vLLM (its CPU build in its own venv, through TUNELAB_VLLM_PYTHON): the predict replies of a
`tunelab eval` job on the vllm engine equal the hf engine's on the same examples (fp32 both, greedy), with the
adapter applied per request, and lm-eval's tasks against the job's `vllm serve` score like lm-eval's HF model; the
export's serve check is tested with the demo export in test_export.py. The test that starts vLLM is marked ``vllm``
(skipped unless TUNELAB_VLLM_PYTHON is set); the refusals without vLLM and the engine choice run everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lm_eval_tasks import write_choice_task
from tunelab.core.eval_config import EvalConfig
from tunelab.core.jobs import JobDir

VLLM_PYTHON = os.environ.get("TUNELAB_VLLM_PYTHON")
requires_vllm = pytest.mark.skipif(not VLLM_PYTHON, reason="TUNELAB_VLLM_PYTHON is not set (make vllm-venv builds .venv-vllm)")
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, timeout=900,
                          env=env or {**os.environ, **CPU_ENV})


def _job(result: subprocess.CompletedProcess) -> JobDir:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return JobDir(next(l for l in result.stdout.splitlines() if l.startswith("eval job: ")).split(": ", 1)[1], "eval")


def test_auto_uses_vllm_only_on_a_gpu_where_vllm_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.core.schema import ConfigError
    from tunelab.engine.eval_vllm import use_vllm

    monkeypatch.delenv("TUNELAB_VLLM_PYTHON", raising=False)
    auto = EvalConfig(model="demo", dataset=["identity"], metrics=["predict"])
    assert not use_vllm(auto, cuda=True)  # no vLLM in this Python, none named
    with pytest.raises(ConfigError, match="engine 'vllm': needs vLLM"):
        use_vllm(auto.model_copy(update={"engine": "vllm"}), cuda=False)
    monkeypatch.setenv("TUNELAB_VLLM_PYTHON", sys.executable)
    assert use_vllm(auto, cuda=True) and not use_vllm(auto, cuda=False)
    assert use_vllm(auto.model_copy(update={"engine": "vllm"}), cuda=False)
    assert not use_vllm(auto.model_copy(update={"engine": "hf"}), cuda=True)
    assert not use_vllm(auto.model_copy(update={"metrics": ["loss"]}), cuda=True)  # nothing to generate


def test_vllm_requests_are_refused_before_any_work_without_vllm(demo_lora_run: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TUNELAB_VLLM_PYTHON"}
    before = set((demo_lora_run / "evals").glob("*")) if (demo_lora_run / "evals").is_dir() else set()
    evaluated = _cli("eval", "--run", str(demo_lora_run), "--metrics", "predict", "engine=vllm", env=env)
    assert evaluated.returncode == 2 and "engine 'vllm': needs vLLM" in evaluated.stderr and "Traceback" not in evaluated.stderr
    assert (set((demo_lora_run / "evals").glob("*")) if (demo_lora_run / "evals").is_dir() else set()) == before
    exported = _cli("export", "--run", str(demo_lora_run), "--out", str(tmp_path / "merged"), "--serve-check", env=env)
    assert exported.returncode == 2 and "serve_check: needs vLLM" in exported.stderr and not (tmp_path / "merged").exists()


@pytest.mark.vllm
@pytest.mark.slow
@requires_vllm
def test_eval_on_vllm_equals_the_hf_engine(demo_lora_run: Path, tmp_path: Path) -> None:
    task = write_choice_task(tmp_path, "tuna_vllm")
    common = ["eval", "--run", str(demo_lora_run), "--metrics", "predict,bench", "--dataset", "identity", "--max-samples",
              "6", "--tasks", str(task), "--limit", "2", "max_new_tokens=16", "bootstrap=0"]
    hf, vllm = _job(_cli(*common, "--engine", "hf")), _job(_cli(*common, "--engine", "vllm"))
    results = vllm.results()
    assert results["engine"] == "vllm" and hf.results()["engine"] == "hf" and results["dtype"] == "float32"
    assert results["timings"]["vllm_start_s"] > 0 and (vllm.path / "vllm.log").is_file()
    ours = [json.loads(line) for line in vllm.predictions_file.read_text().splitlines()]
    theirs = [json.loads(line) for line in hf.predictions_file.read_text().splitlines()]
    assert [(p["base"], p["tuned"]) for p in ours] == [(p["base"], p["tuned"]) for p in theirs]  # greedy, fp32: the same text
    assert any("Tuna" in p["tuned"] for p in ours) and not any("Tuna" in p["base"] for p in ours)  # the LoRA, per request
    rows = {r["name"]: r for r in results["metrics"]}
    hf_rows = {r["name"]: r for r in hf.results()["metrics"]}
    acc = rows["tuna_vllm/acc"]
    assert (acc["base"], acc["tuned"], acc["n"]) == (hf_rows["tuna_vllm/acc"]["base"], hf_rows["tuna_vllm/acc"]["tuned"], 2)
    assert rows["bleu4"]["tuned"] == pytest.approx(hf_rows["bleu4"]["tuned"])
