"""Evaluation jobs: loss/perplexity and generation metrics for base and fine-tuned, lm-eval on a local task,
offline and bad-input messages, and the scores themselves checked against sacrebleu / rouge-score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.lm_eval_tasks import write_choice_task
from tunelab.core.jobs import JobDir



def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, timeout=timeout)


def _job(stdout: str) -> JobDir:
    return JobDir(next(l for l in stdout.splitlines() if l.startswith("eval job: ")).split(": ", 1)[1], "eval")


def _rows(job: JobDir) -> dict[str, dict]:
    return {row["name"]: row for row in job.results()["metrics"]}


@pytest.fixture(scope="module")
def local_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_choice_task(tmp_path_factory.mktemp("tasks"), "tuna_qa")


def test_loss_and_predict_on_a_demo_run(demo_lora_run: Path) -> None:
    result = _cli("eval", "--run", str(demo_lora_run), "--metrics", "loss,predict", "--max-samples", "12", "max_new_tokens=24")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    job = _job(result.stdout)
    assert job.status()["state"] == "succeeded" and job.path.parent == demo_lora_run / "evals"
    rows = _rows(job)
    loss = rows["loss"]
    # the adapter was trained on exactly these examples: its loss must be clearly lower than the base's
    assert loss["tuned"] < loss["base"] and loss["delta"] < -3 * loss["delta_stderr"]
    assert rows["perplexity"]["tuned"] == pytest.approx(np.exp(loss["tuned"]), rel=1e-4)
    assert {"bleu4", "rouge1", "rouge2", "rougeL"} <= set(rows) and loss["n"] == 12
    assert "loss" in result.stdout and "delta ± stderr" in result.stdout
    events = [json.loads(line) for line in job.events_file.read_text().splitlines()]
    assert {e["name"] for e in events if e["type"] == "metric"} == set(rows)
    predictions = [json.loads(line) for line in job.predictions_file.read_text().splitlines()]
    assert len(predictions) == 12 and all({"prompt", "reference", "base", "tuned"} <= set(p) for p in predictions)


def _write_qa_dataset(path: Path) -> Path:
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)} for a, b in [(1, 2), (2, 2), (3, 4), (5, 1), (6, 2), (4, 4)]]
    path.write_text(json.dumps(rows))
    return path


def test_predict_scores_match_sacrebleu_and_rouge_score(tiny_model_dir: Path, tmp_path: Path) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    from tests.engine.test_export import _tiny_adapter
    from tunelab.services.model_jobs import run_job_and_wait

    adapter = _tiny_adapter(tiny_model_dir, tmp_path / "adapter", use_dora=False)
    data = _write_qa_dataset(tmp_path / "sums.json")
    options = {"model": str(tiny_model_dir), "adapter": str(adapter), "metrics": ["predict"], "dataset": [str(data)],
               "max_new_tokens": 8, "bootstrap": 200}
    job, results = run_job_and_wait("eval", options, tmp_path / "runs", timeout=600)
    rows = {row["name"]: row for row in results["metrics"]}
    predictions = [json.loads(line) for line in job.predictions_file.read_text().splitlines()]
    references = [p["reference"] for p in predictions]
    assert references == ["3", "4", "7", "6", "8", "8"]  # the replies of the data, without the end-of-turn token
    assert [p["tuned"] for p in predictions] != [p["base"] for p in predictions]  # the adapter changes the replies
    for side in ("base", "tuned"):
        hyps = [p[side] for p in predictions]
        assert rows["bleu4"][side] == pytest.approx(sacrebleu.corpus_bleu(hyps, [references]).score, abs=1e-6)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        expected = np.mean([100 * scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, references)])
        assert rows["rougeL"][side] == pytest.approx(expected, abs=1e-6)
        assert rows["exact_match"][side] == pytest.approx(100 * np.mean([h.strip() == r for h, r in zip(hyps, references)]))
    assert rows["bleu4"]["stderr_method"].startswith("paired bootstrap")


def test_lm_eval_local_task_base_vs_adapter(demo_lora_run: Path, local_task: Path) -> None:
    result = _cli("eval", "--run", str(demo_lora_run), "--metrics", "bench", "--tasks", str(local_task), "--limit", "3")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    job = _job(result.stdout)
    rows = _rows(job)
    assert set(rows) == {"tuna_qa/acc"}
    acc = rows["tuna_qa/acc"]
    assert acc["n"] == 3 and acc["base"] in (0, 1 / 3, 2 / 3, 1) and acc["tuned"] in (0, 1 / 3, 2 / 3, 1)
    assert acc["tuned_stderr"] is not None and acc["delta_stderr"] is not None
    assert "quick mode" in " ".join(job.results()["notes"])


def test_lm_eval_uses_the_adapter(demo_lora_run: Path, demo_model_dir: Path, local_task: Path) -> None:
    """lm-eval's logged log-likelihoods for the fine-tuned side equal our own with the peft adapter applied."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.core.eval_config import EvalConfig
    from tunelab.engine.bench import run_bench

    cfg = EvalConfig(run=str(demo_lora_run), metrics=["bench"], tasks=[str(local_task)], limit=2, bootstrap=0, batch_size=1)
    adapter = str(demo_lora_run / "adapter")
    tuned = run_bench(cfg, str(demo_model_dir), adapter, adapter, "cpu", "float32")
    base = run_bench(cfg, str(demo_model_dir), None, adapter, "cpu", "float32")
    sample_t, sample_b = tuned["samples"]["tuna_qa"][0], base["samples"]["tuna_qa"][0]
    context, continuation = sample_t["arguments"][0]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir), adapter).eval()
    # lm-eval moves the context's trailing whitespace into the continuation before scoring
    context_ids = tokenizer(context.rstrip(), add_special_tokens=False).input_ids
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0, :-1], dim=-1)
    ours = sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))
    theirs = sample_t["resps"][0][0][0]
    assert ours == pytest.approx(float(theirs), abs=1e-3)
    assert abs(float(sample_b["resps"][0][0][0]) - float(theirs)) > 0.5  # and the base side is really the base


def test_hub_task_offline_and_bad_input_fail_clearly(demo_lora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.core.eval_config import EvalConfig
    from tunelab.engine.bench import BenchError, run_bench

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = EvalConfig(run=str(demo_lora_run), metrics=["bench"], tasks=["arc_easy"], limit=1)
    with pytest.raises(BenchError, match="offline"):
        run_bench(cfg, "unused: fails before loading a model", None, "unused", "cpu", "float32")
    cfg = EvalConfig(run=str(demo_lora_run), metrics=["bench"], tasks=["arc_easyy"], limit=1)
    with pytest.raises(BenchError, match="did you mean arc_easy"):
        run_bench(cfg, "unused", None, "unused", "cpu", "float32")
    bad = _cli("eval", "--run", str(demo_lora_run), "--metrics", "loss,vibes")
    assert bad.returncode == 2 and "'vibes' is not valid" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli("eval", "--adapter", str(tmp_path), "--dataset", "identity")
    assert missing.returncode == 2 and "not a PEFT adapter folder" in missing.stderr


def test_standard_errors_are_paired() -> None:
    from tunelab.engine.scoring import corpus_metric, loss_from_sums, mean_metric

    rng = np.random.default_rng(0)
    base = rng.normal(50, 10, 400)
    tuned = base + 1.0 + rng.normal(0, 1, 400)  # strongly correlated with the base: the delta is precise
    row = mean_metric("rougeL", tuned, base)
    assert row["delta_stderr"] == pytest.approx(np.std(tuned - base, ddof=1) / 20, rel=1e-4)
    assert row["delta_stderr"] < 0.2 * np.hypot(row["base_stderr"], row["tuned_stderr"])
    sums_b = np.stack([rng.uniform(10, 30, 400), np.full(400, 10.0)], axis=1)
    sums_t = sums_b * [0.9, 1.0]
    row = corpus_metric("loss", sums_t, sums_b, loss_from_sums, 300, 0, higher_is_better=False)
    assert row["delta"] == pytest.approx(-0.1 * sums_b[:, 0].sum() / sums_b[:, 1].sum())
    assert 0 < row["delta_stderr"] < row["base_stderr"]


def test_eval_job_stops_on_sigterm(demo_lora_run: Path, tmp_path: Path) -> None:
    import time

    from tunelab.services.model_jobs import start_job
    from tunelab.services.runner import group_alive, stop_run

    options = {"run": str(demo_lora_run), "metrics": ["predict"], "max_samples": 200, "max_new_tokens": 64}
    job, process = start_job("eval", options, path=tmp_path / "job")
    deadline = time.time() + 120
    while job.status().get("state") != "running" and time.time() < deadline:
        time.sleep(0.2)
    assert job.status().get("state") == "running"
    assert stop_run(job, grace_s=60)
    assert process.wait(timeout=30) == 130
    status = job.status()
    assert status["state"] == "aborted" and "SIGTERM" in status["message"] and not group_alive(status["pgid"])
    assert not job.results_file.exists()


def test_loss_and_predict_on_vllm_release_the_hf_model_before_vllm_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # on a GPU, vLLM refuses to start while the hf model (loss) still holds the memory it wants
    import contextlib
    import gc
    import weakref
    from types import SimpleNamespace

    from tunelab.engine import eval_lm, evaluate, export, scoring

    class Model:
        pass

    alive: list[weakref.ref] = []
    order: list[str] = []

    @contextlib.contextmanager
    def open_sides():
        model = Model()
        alive.append(weakref.ref(model))

        @contextlib.contextmanager
        def use(side: str):
            yield model

        yield use

    def losses(model, rows, batch_size, pad):
        order.append("loss")
        return np.zeros(len(rows))

    def replies(vllm, side, prompts, *args):
        gc.collect()
        order.append(f"vllm {side}, hf model {'alive' if any(ref() for ref in alive) else 'released'}")
        return ["x"] * len(prompts)

    monkeypatch.setattr(eval_lm, "example_losses", losses)
    monkeypatch.setattr(eval_lm, "prompt_and_reference", lambda row: (row["prompt"], row["reply"]))
    monkeypatch.setattr(eval_lm, "decode_reference", lambda tokenizer, reference, stops: "x")
    monkeypatch.setattr(export, "stop_token_ids", lambda tokenizer, stops: [0])
    monkeypatch.setattr(scoring, "loss_rows", lambda *args: [])
    monkeypatch.setattr(scoring, "generation_rows", lambda *args: [])
    monkeypatch.setattr(evaluate, "vllm_replies", replies)
    cfg = SimpleNamespace(metrics=["loss", "predict"], batch_size=2, max_new_tokens=4, bootstrap=0, seed=0)
    data = SimpleNamespace(rows=[{"prompt": [1, 2], "reply": [3]}] * 3, stage="sft", chats={})
    job = SimpleNamespace(predictions_file=tmp_path / "predictions.jsonl")
    results: dict = {"timings": {}, "metrics": []}
    evaluate._score_lm(cfg, job, None, results, data, SimpleNamespace(pad_token_id=0, decode=lambda ids: "p"),
                       SimpleNamespace(stop_strings=[]), open_sides, ["base", "tuned"], SimpleNamespace(start_s=0.0),
                       lambda *args, **kwargs: None)
    assert order == ["loss", "loss", "vllm base, hf model released", "vllm tuned, hf model released"]
    assert len(job.predictions_file.read_text().splitlines()) == 3 and set(results["timings"]) == {"predict_base_s", "predict_tuned_s"}
