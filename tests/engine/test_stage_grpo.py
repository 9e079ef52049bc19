"""GRPO and RLOO end to end on the demo model through `tunelab train examples/demo_cpu_grpo.yaml` (CPU, seeded):
the learnable length reward rises, per-function means land in events.jsonl, the adapter loads in plain peft, a
broken user reward fails the run in one line, and `tunelab eval` scores the run's rewards base vs tuned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.core.rundir import RunDir

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo_cpu_grpo.yaml"
QUICK = ["val_size=0", "reward_funcs=[length:2]", "reward_weights=null", "report_to=none"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, timeout=600)


def train(runs: Path, *overrides: str, expect: int = 0) -> tuple[RunDir, subprocess.CompletedProcess]:
    result = cli("train", str(EXAMPLE), *QUICK, *overrides, "--runs-dir", str(runs))
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-2000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("run directory: "))
    return RunDir(line.removeprefix("run directory: ")), result


def train_events(run: RunDir) -> list[dict]:
    rows = [json.loads(line) for line in run.events_file.read_text().splitlines()]
    return [e for e in rows if e["type"] == "train"]


@pytest.fixture(scope="module")
def grpo_run(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    run, _ = train(tmp_path_factory.mktemp("grpo"), "max_steps=16")
    return run


def test_grpo_raises_the_learnable_reward(grpo_run: RunDir, demo_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    status = grpo_run.status()
    assert status["state"] == "succeeded" and status["global_step"] == 16
    assert status["generation_engine"] == "hf" and status["booster"] == "none"
    assert "stage 'grpo'" in status["booster_reason"]
    assert "generation: transformers generate" in grpo_run.log_file.read_text()
    events = train_events(grpo_run)
    assert len(events) == 16
    for key in ("reward", "reward_std", "rewards/length/mean", "completions/mean_length", "loss"):
        assert all(isinstance(e.get(key), (int, float)) for e in events), key
    rewards = [e["rewards/length/mean"] for e in events]
    # seeded; 8 steps were too few to rise by 0.05 on every CPU (0.048 on one): 16 rose by 0.13 there
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.05, rewards
    # The adapter is plain PEFT and training moved its LoRA B matrices off their zero init.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir), str(grpo_run.adapter_dir))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and max(float(p.abs().max()) for p in lora_b) > 0
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_eval_scores_the_run_rewards_base_vs_tuned(grpo_run: RunDir) -> None:
    result = cli("eval", "--run", str(grpo_run.path), "--max-samples", "8")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    job = Path(next(l for l in result.stdout.splitlines() if l.startswith("eval job: ")).removeprefix("eval job: "))
    results = json.loads((job / "results.json").read_text())
    (row,) = [m for m in results["metrics"] if m["name"] == "reward"]
    assert row["n"] == 8 and row["delta"] == pytest.approx(row["tuned"] - row["base"], abs=1e-6)
    assert row["tuned"] > row["base"] and row["delta_stderr"] is not None
    predictions = [json.loads(l) for l in (job / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and {"prompt", "base", "tuned"} <= set(predictions[0])
    assert "reward" in result.stdout


def test_a_broken_user_reward_fails_the_run_in_one_line(demo_model_dir: Path, tmp_path: Path) -> None:
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def ratio(prompts, completions, **kwargs):\n    return [1 / 0 for _ in completions]\n")
    run, result = train(tmp_path / "runs", "max_steps=1", f"reward_funcs=[{rewards}:ratio]", expect=1)
    error = run.status()["error"]
    assert error == f"reward function 'ratio' ({rewards}:ratio) raised ZeroDivisionError: division by zero"
    assert "Traceback" not in result.stdout + result.stderr
    assert "ZeroDivisionError" in run.log_file.read_text() and "Traceback" in run.log_file.read_text()


def test_a_bad_reward_spec_is_refused_before_training(tmp_path: Path) -> None:
    result = cli("train", str(EXAMPLE), "reward_funcs=[lenght:2]", "--runs-dir", str(tmp_path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "reward_funcs: 'lenght:2' is not a known reward function; valid choices: exact_answer" in result.stderr
    assert not list(tmp_path.glob("*/events.jsonl"))  # no run started


def test_rloo_runs_from_the_same_yaml(demo_model_dir: Path, tmp_path: Path) -> None:
    run, _ = train(tmp_path, "stage=rloo", "max_steps=1")
    assert run.status()["state"] == "succeeded"
    events = train_events(run)
    assert len(events) == 1 and all("rewards/length/mean" in e for e in events)
    assert (run.adapter_dir / "adapter_config.json").is_file()


def test_prompts_render_as_inference_renders_them(demo_model_dir: Path) -> None:
    from tunelab.core.template_choice import choose_template
    from tunelab.engine.model import load_tokenizer
    from tunelab.engine.stages.grpo import render_kwargs

    tokenizer = load_tokenizer(str(demo_model_dir))
    choice = choose_template("auto", "demo", demo_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"}]
    tokenizer.chat_template = choice.template.source  # what the grpo stage sets before trl renders prompts
    trl_ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, **render_kwargs(choice))["input_ids"]
    served = choice.template.render(messages, add_generation_prompt=True, model=choice.entry).text
    assert trl_ids == tokenizer(served, add_special_tokens=False)["input_ids"]
