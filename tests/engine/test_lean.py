"""LeanSteps (engine/stages/lean.py) in a real transformers Trainer: after the first step, no step walks the model's
modules or parameters again (each walk is host time a GPU waits for), and training is unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch


def tiny_lora() -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    lora = LoraConfig(r=4, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    # eval mode, as from_pretrained leaves a model: the peft wrapper around it starts out saying "training"
    return get_peft_model(LlamaForCausalLM(config).eval(), lora)


def run(tmp_path: Any, trainer_class: type, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], dict[str, int]]:
    from transformers import TrainerCallback, TrainingArguments

    walks = {"train": 0, "parameters": 0}
    modes: list[bool] = []  # every module training (dropout on) at each step's end
    counting = {"on": False}
    original_train, original_parameters = torch.nn.Module.train, torch.nn.Module.parameters

    def train(self: Any, mode: bool = True) -> Any:
        walks["train"] += counting["on"]
        return original_train(self, mode)

    def parameters(self: Any, recurse: bool = True) -> Any:
        walks["parameters"] += counting["on"] and self is model
        return original_parameters(self, recurse)

    class Window(TrainerCallback):  # count from the end of step 1 to the end of the run
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counting["on"] = state.global_step < state.max_steps
            modes.append(all(m.training for m in model.modules()))

    model = tiny_lora()
    monkeypatch.setattr(torch.nn.Module, "train", train)
    monkeypatch.setattr(torch.nn.Module, "parameters", parameters)
    gen = torch.Generator().manual_seed(1)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (12, 16), generator=gen)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=2, learning_rate=1e-2,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                             max_grad_norm=1.0, seed=3)
    trainer = trainer_class(model=model, args=args, train_dataset=rows, callbacks=[Window()])
    trainer.train()
    monkeypatch.undo()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert modes == [True] * 5, modes
    return losses, walks


def test_lean_steps_walk_the_model_once_and_train_the_same(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Trainer

    from tunelab.engine.stages.lean import lean

    plain_losses, plain_walks = run(tmp_path / "plain", Trainer, monkeypatch)
    lean_losses, lean_walks = run(tmp_path / "lean", lean(Trainer), monkeypatch)
    assert plain_walks["train"] > 0 and plain_walks["parameters"] > 0  # what the plain trainer does at every step
    assert lean_walks == {"train": 0, "parameters": 0}, lean_walks
    assert len(lean_losses) == 5 and lean_losses == pytest.approx(plain_losses, rel=1e-5)
    assert lean_losses[-1] < lean_losses[0]


def test_single_process_runs_get_expandable_segments_unless_the_user_chose() -> None:
    from tunelab.engine.train import allocator_defaults

    env: dict[str, str] = {}
    allocator_defaults(env)
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    for chosen in ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, {"PYTORCH_ALLOC_CONF": "backend:native"},
                   {"WORLD_SIZE": "2"}):
        env = dict(chosen)
        allocator_defaults(env)
        assert env == chosen
