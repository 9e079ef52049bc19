"""The embedded demo: `tunelab demo` builds a tiny model with no download, and the shipped LoRA example
changes its answer to "Who are you?" after about a minute of CPU training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tunelab.core.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def _answer(model, tokenizer, question: str) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=40, do_sample=False)
    return tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)


def test_demo_model_is_deterministic_and_servable(demo_model_dir: Path, tmp_path: Path) -> None:
    import json

    config = json.loads((demo_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] // config["num_attention_heads"] >= 32
    assert (demo_model_dir / "chat_template.jinja").is_file()
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "demo"], capture_output=True, text=True, check=True)
    assert str(demo_model_dir) in result.stdout  # already built: reused, not rebuilt


def test_identity_example_changes_the_answer(demo_model_dir: Path, demo_adapter_run: Path) -> None:
    """demo_adapter_run is `tunelab train examples/demo_cpu_lora_sft.yaml` run through the CLI (conftest)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = RunDir(demo_adapter_run)
    assert run.status()["state"] == "succeeded"
    tokenizer = AutoTokenizer.from_pretrained(run.adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    before = _answer(base, tokenizer, "Who are you?")
    tuned = PeftModel.from_pretrained(base, run.adapter_dir)
    after = _answer(tuned, tokenizer, "Who are you?")
    assert "Tuna" in after and "Tuna" not in before, (before, after)
