"""LLaMA-Factory training YAMLs: translated to RunConfig fields, notes for keys with no equivalent, honest hints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.core.config import ConfigError, load_config, validate_config
from tunelab.core.lf_import import load_any_config, translate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "llamafactory_demo_lora_sft.yaml"

# The keys of LLaMA-Factory's examples/train_qlora/qwen3_lora_sft_otfq.yaml (its own example file).
LF_QLORA = {
    "model_name_or_path": "Qwen/Qwen3-4B-Instruct-2507", "quantization_bit": 4, "quantization_method": "bnb",
    "trust_remote_code": True, "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 8,
    "lora_target": "all", "dataset": "identity,alpaca_demo", "template": "qwen3_nothink", "cutoff_len": 2048,
    "max_samples": 1000, "preprocessing_num_workers": 16, "dataloader_num_workers": 4,
    "output_dir": "saves/qwen3-4b/lora/sft", "logging_steps": 10, "save_steps": 500, "plot_loss": True,
    "overwrite_output_dir": True, "save_only_model": False, "report_to": "none",
    "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "learning_rate": 1.0e-4,
    "num_train_epochs": 3.0, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": True,
    "ddp_timeout": 180000000, "val_size": 0.1, "resume_from_checkpoint": None,
}


def test_qlora_example_translates_field_by_field() -> None:
    data, notes = translate(LF_QLORA)
    config = validate_config(data)
    assert (config.model, config.method, config.quantization) == ("Qwen/Qwen3-4B-Instruct-2507", "qlora", "4bit")
    assert (config.batch_size, config.num_epochs, config.lr_scheduler, config.precision) == (1, 3.0, "cosine", "bf16")
    assert config.template == "chatml"  # qwen3_nothink: Qwen3 Instruct-2507 is plain ChatML
    assert config.dataset == ["identity", "alpaca_demo"] and config.report_to == [] and config.val_size == 0.1
    assert config.gradient_checkpointing  # LLaMA-Factory's default, kept
    ignored = {n.split(":")[0] for n in notes if ": ignored - " in n}
    assert config.preprocessing_num_workers == 16  # the same key in tunelab
    assert ignored == {"do_train", "dataloader_num_workers", "plot_loss",
                       "overwrite_output_dir", "save_only_model", "ddp_timeout"}
    assert all(len(n.splitlines()) == 1 for n in notes)


def test_deepspeed_and_preference_keys() -> None:
    data, notes = translate({"model_name_or_path": "x", "stage": "dpo", "finetuning_type": "full", "pref_beta": 0.2,
                             "pref_loss": "simpo", "deepspeed": "examples/deepspeed/ds_z3_offload_config.json"})
    assert data["stage"] == "simpo" and data["beta"] == 0.2
    assert (data["strategy"], data["offload"]) == ("deepspeed_zero3", True)
    assert any(n.startswith("deepspeed: ") and "nproc_per_node" in n for n in notes)
    data, _ = translate({"model_name_or_path": "x", "stage": "dpo", "pref_loss": "ipo", "flash_attn": "fa2"})
    assert data["dpo_loss"] == "ipo" and data["attn_implementation"] == "flash_attention_2"


def test_catalog_family_wins_over_a_coarse_name() -> None:
    """LLaMA-Factory's one `qwen` name covers Qwen2 and Qwen2.5 (different default systems): the catalog decides."""
    data, notes = translate({"model_name_or_path": "Qwen/Qwen2-7B-Instruct", "template": "qwen"})
    assert data["template"] == "auto" and any("'qwen2'" in n for n in notes)
    data, _ = translate({"model_name_or_path": "Qwen/Qwen2.5-7B-Instruct", "template": "qwen"})
    assert data["template"] == "qwen2_5"


def test_unknown_keys_hint_from_the_alias_table_not_similarity() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({"deepspeed": "ds.json", "resume_from_checkpoint": "ckpt", "per_device_train_batch_size": 2,
                         "plot_loss": True, "xyzzy_frobnicate": 1})
    text = str(err.value)
    assert "seed" not in text and "fast_checkpointing" not in text  # the misleading similarity matches of old
    assert "'resume_from_checkpoint' is 'resume' here" in text and "'per_device_train_batch_size' is 'batch_size'" in text
    assert "'deepspeed' is 'strategy, deepspeed_config' here" in text and "plot_loss' has no equivalent" in text
    assert "xyzzy_frobnicate: unknown field\n" in text + "\n"


def test_bad_values_name_the_key_and_choices() -> None:
    with pytest.raises(ConfigError, match=r"quantization_bit: 3 is not valid; valid choices: 4, 8"):
        translate({"model_name_or_path": "x", "quantization_bit": 3})


def test_import_config_writes_a_tunelab_yaml(tmp_path: Path) -> None:
    out = tmp_path / "run.yaml"
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "import-config", str(EXAMPLE), "-o", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "note: do_train: ignored - " in result.stderr and "Traceback" not in result.stderr
    written = yaml.safe_load(out.read_text())
    assert "model_name_or_path" not in written and written["model"] == "demo" and written["template"] == "chatml"
    assert load_config(out) == load_any_config(EXAMPLE)[0]


@pytest.mark.slow  # a real trainer subprocess: ~20 s idle, about a minute on the shared 2 cores
def test_train_runs_a_llamafactory_yaml(demo_model_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", str(EXAMPLE), "max_steps=2", f"output_dir={tmp_path / 'run'}",
         "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "read as a LLaMA-Factory config" in result.stderr and "plot_loss: ignored" in result.stderr
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["batch_size"] == 8 and resolved["template"] == "chatml" and resolved["num_epochs"] == 12.0
    assert "per_device_train_batch_size" not in resolved
