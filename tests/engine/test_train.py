"""Training end to end through the real trainer process (`tunelab train` -> python -m tunelab.engine.train).

Tiny local Llama models, no hub. Each test asserts behaviour: loss falls, the right weights change, the saved
adapter loads in plain peft and generates, resume continues the step count, SIGTERM aborts cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.core.config import load_config
from tunelab.core.rundir import RunDir
from tunelab.services.runner import group_alive

EVENT_FIELDS = {"step", "total_steps", "epoch", "loss", "grad_norm", "lr", "tokens_seen", "tokens_per_s", "elapsed_s", "eta_s"}
BASE = ["dataset=identity", "cutoff_len=128", "batch_size=4", "logging_steps=1", "precision=fp32", "learning_rate=1e-2"]


def train(tmp_path: Path, model: Path, *overrides: str, expect: int = 0) -> RunDir:
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", f"model={model}", *BASE, *overrides, "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-2000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("run directory: "))
    return RunDir(line.removeprefix("run directory: "))


def events(run: RunDir, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in run.events_file.read_text().splitlines()]
    return [e for e in rows if e["type"] == kind]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def loss_fell(run: RunDir) -> bool:
    losses = [e["loss"] for e in events(run, "train")]
    return len(losses) >= 6 and mean(losses[-3:]) < mean(losses[:3]) * 0.93


def state_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_lora_run_matches_the_contract(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = train(tmp_path, tiny_model_dir, "method=lora", "max_steps=16", "save_steps=8", "lora_rank=8")
    status = run.status()
    assert status["state"] == "succeeded" and status["global_step"] == 16 and status["template"] == "chatml"
    assert status["exit_code"] == 0 and status["finished_at"] >= status["started_at"]
    for name in ("config.yaml", "command.sh", "status.json", "events.jsonl", "train.log"):
        assert (run.path / name).is_file(), name
    assert load_config(run.config_file).output_dir == str(run.path)  # fully resolved, re-loadable
    assert "tunelab train" in run.command_file.read_text()
    assert (run.checkpoints / "checkpoint-8").is_dir() and (run.checkpoints / "checkpoint-16").is_dir()
    assert any(run.tb_dir.rglob("events.out.tfevents*")), "TensorBoard logs"
    train_events = events(run, "train")
    assert EVENT_FIELDS <= set(train_events[-1]) and train_events[-1]["total_steps"] == 16
    assert events(run, "data")[0]["kept"] == 68
    assert loss_fell(run)
    # The adapter is plain PEFT, carries the chat template and an Ollama Modelfile, and generates.
    adapter = run.adapter_dir
    assert (adapter / "adapter_config.json").is_file() and (adapter / "chat_template.jinja").is_file()
    assert "TEMPLATE" in (adapter / "Modelfile").read_text()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, adapter)
    for name, tensor in tuned.base_model.model.state_dict().items():
        if "lora_" not in name and name.replace(".base_layer", "") in original:
            assert torch.equal(tensor, original[name.replace(".base_layer", "")]), f"frozen weight {name} changed"
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "LoRA B matrices moved off zero"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = tuned.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_qlora_trains_on_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = train(tmp_path, tiny_model_dir, "method=qlora", "max_steps=10", "save_steps=100")
    assert run.status()["state"] == "succeeded" and loss_fell(run)
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"


def test_full_finetune_with_validation(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    run = train(tmp_path, tiny_model_dir, "method=full", "max_steps=12", "val_size=0.1", "eval_steps=6", "learning_rate=1e-3")
    assert run.status()["state"] == "succeeded" and loss_fell(run)
    evals = events(run, "eval")
    assert evals and all("eval_loss" in e for e in evals) and evals[-1]["step"] == 12
    before, after = state_dict(tiny_model_dir), state_dict(run.model_dir)
    assert all(not (before[k] == after[k]).all() for k in before if k.endswith("q_proj.weight"))
    AutoModelForCausalLM.from_pretrained(run.model_dir)  # loads with plain transformers


def test_freeze_trains_only_the_last_layers(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = train(tmp_path, tiny_model_dir, "method=freeze", "freeze_trainable_layers=1", "max_steps=8", "learning_rate=1e-3")
    assert run.status()["state"] == "succeeded"
    before, after = state_dict(tiny_model_dir), state_dict(run.model_dir)
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all(k.startswith("model.layers.1.") for k in changed), sorted(changed)[:5]


def test_pretraining_with_packing(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = train(tmp_path, tiny_model_dir, "stage=pt", "dataset=text_demo", "packing=true", "method=full", "max_steps=10", "learning_rate=1e-3")
    assert run.status()["state"] == "succeeded" and loss_fell(run)
    assert events(run, "data")[0]["examples"] == 400


def test_resume_continues_the_step_count(tmp_path: Path, tiny_model_dir: Path) -> None:
    first = train(tmp_path, tiny_model_dir, "method=lora", "max_steps=6", "save_steps=3")
    assert [e["step"] for e in events(first, "train")][-1] == 6
    again = train(tmp_path, tiny_model_dir, str(first.config_file), "resume=true", "max_steps=10")
    assert again.path == first.path
    steps = [e["step"] for e in events(first, "train")]
    assert steps == list(range(1, 11)), steps  # 1..6, then 7..10 after resuming from checkpoint-6
    assert first.status()["global_step"] == 10
    assert "tokenized data from cache" in first.log_file.read_text()  # same data, tokenizer, template: cached


def test_sigterm_finishes_the_step_saves_and_aborts(tmp_path: Path, tiny_model_dir: Path) -> None:
    runs = tmp_path / "runs"
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "train", f"model={tiny_model_dir}", *BASE, "max_steps=100000",
         "save_steps=100000", "--runs-dir", str(runs), "--detach"],
        stdout=subprocess.PIPE, text=True,
    )
    out, _ = process.communicate(timeout=60)
    run = RunDir(next(l for l in out.splitlines() if l.startswith("run directory: ")).removeprefix("run directory: "))
    deadline = time.time() + 120
    while time.time() < deadline and not (run.events_file.exists() and len(events(run, "train")) >= 3):
        time.sleep(0.2)
    assert len(events(run, "train")) >= 3, run.log_file.read_text()[-2000:]
    pgid = run.status()["pgid"]
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.time() + 60
    while time.time() < deadline and run.status().get("state") == "running":
        time.sleep(0.2)
    status = run.status()
    assert status["state"] == "aborted", status
    step = status["global_step"]
    assert (run.checkpoints / f"checkpoint-{step}").is_dir(), "the stopped step was saved"
    assert run.adapter_dir.is_dir()
    deadline = time.time() + 10
    while time.time() < deadline and group_alive(pgid):
        time.sleep(0.1)
    assert not group_alive(pgid), "no trainer process left"


def test_packed_rows_do_not_attend_across_examples(tiny_model_dir: Path) -> None:
    """Packing relies on position_ids restarting per example; logits must equal the unpacked ones."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    model.config.use_cache = False
    a, b = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[10, 11, 12]])
    packed = torch.cat([a, b], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    with torch.no_grad():
        joint = model(input_ids=packed, position_ids=positions, use_cache=False).logits
        alone = model(input_ids=b, use_cache=False).logits
    assert torch.allclose(joint[:, 5:], alone, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "adapter_fields"),
    [
        (["use_dora=true", "use_rslora=true", "loraplus_lr_ratio=8", "neftune_alpha=5"], {"use_dora": True, "use_rslora": True}),
        (["pissa_init=true"], {"init_lora_weights": "pissa"}),
        (["optimizer=paged_adamw_8bit", "gradient_checkpointing=true"], {}),
        (["method=qlora", "quantization=8bit"], {}),
    ],
    ids=["dora-rslora-loraplus-neftune", "pissa", "8bit-optimizer-checkpointing", "qlora-8bit"],
)
def test_lora_variants_train(tmp_path: Path, tiny_model_dir: Path, options: list[str], adapter_fields: dict) -> None:
    run = train(tmp_path, tiny_model_dir, "max_steps=4", "save_steps=100", *options)
    assert run.status()["state"] == "succeeded"
    assert len(events(run, "train")) == 4
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    for key, value in adapter_fields.items():
        assert config[key] == value, (key, config[key])


def test_missing_model_folder_is_a_config_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", "model=/no/such/model", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "model: '/no/such/model' is not a folder" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_failing_run_reports_failed_with_the_reason(tmp_path: Path) -> None:
    """A hub id cannot be fetched here (no hub): the run ends 'failed' with a summary, the CLI exits 1."""
    run = train(tmp_path, "no-such-org/no-such-model", "max_steps=2", expect=1)
    status = run.status()
    assert status["state"] == "failed" and status["exit_code"] == 1
    assert "no-such-org/no-such-model" in status["error"]


def test_fast_booster_trains_like_plain_transformers(tmp_path: Path, tiny_model_dir: Path) -> None:
    """booster=fast on the CPU (PyTorch ops in place of the Triton kernels) runs the trainer through the fast path:
    padded batches unpadded, fused LoRA blocks, offloaded checkpointing; its losses follow plain transformers'
    (identical first step), and the adapter is plain PEFT. booster=auto on the CPU falls back to plain transformers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    args = ("method=lora", "max_steps=6", "save_steps=100", "gradient_checkpointing=true", "learning_rate=3e-3")
    plain = train(tmp_path / "plain", tiny_model_dir, *args, "booster=auto")
    fast = train(tmp_path / "fast", tiny_model_dir, *args, "booster=fast")
    assert plain.status()["booster"] == "none" and "no CUDA GPU" in plain.status()["booster_reason"]
    assert fast.status()["booster"] == "fast" and "fast path on" in fast.log_file.read_text()
    losses = [[e["loss"] for e in events(run, "train")] for run in (plain, fast)]
    assert len(losses[0]) == len(losses[1]) == 6
    assert abs(losses[0][0] - losses[1][0]) <= 1e-5 * losses[0][0], losses  # same model, same first batch
    # later steps drift apart only by rounding amplified through Adam (its first updates are sign-like)
    assert all(abs(a - b) <= 0.02 * a for a, b in zip(*losses)), losses
    assert all(run_losses[-1] < run_losses[0] for run_losses in losses)
    # the fast path's fused loss also yields trl's metrics (entropy, top-1 accuracy) and the token counts
    first = [events(run, "train")[0] for run in (plain, fast)]
    assert abs(first[0]["entropy"] - first[1]["entropy"]) <= 1e-4 * first[0]["entropy"], first
    assert first[0]["mean_token_accuracy"] == pytest.approx(first[1]["mean_token_accuracy"], abs=1e-6)
    assert [[e["tokens_seen"], e["num_tokens"]] for e in events(plain, "train")] == \
        [[e["tokens_seen"], e["num_tokens"]] for e in events(fast, "train")]
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), fast.adapter_dir)
    assert any(p.abs().sum() > 0 for n, p in tuned.named_parameters() if "lora_B" in n)


def test_fast_booster_refuses_what_it_cannot_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = train(tmp_path, tiny_model_dir, "method=full", "max_steps=2", "booster=fast", expect=1)
    assert "booster: 'fast' does not support method 'full'" in run.status()["error"]
