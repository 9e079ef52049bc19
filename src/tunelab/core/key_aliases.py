"""Other tools' config keys, as data: what each is called in tunelab, or why it has no equivalent.

Read by tunelab.core.lf_import (translating a LLaMA-Factory training YAML) and by schema.describe_error (the
hint for an unknown field comes from here first, string similarity second). Key names are LLaMA-Factory's
(src/llamafactory/hparams and the Hugging Face TrainingArguments its YAMLs use).
"""

from __future__ import annotations

# LLaMA-Factory key -> tunelab RunConfig field (values carry over unchanged).
RENAMED: dict[str, str] = {
    "model_name_or_path": "model",
    "finetuning_type": "method",
    "per_device_train_batch_size": "batch_size",
    "num_train_epochs": "num_epochs",
    "lr_scheduler_type": "lr_scheduler",
    "optim": "optimizer",
    "neftune_noise_alpha": "neftune_alpha",
    "default_system": "system_prompt",
    "quantization_type": "quant_type",
    "double_quantization": "double_quant",
    "pref_beta": "beta",
    "dpo_label_smoothing": "label_smoothing",
    "kto_chosen_weight": "kto_desirable_weight",
    "kto_rejected_weight": "kto_undesirable_weight",
}

# LLaMA-Factory keys whose value is translated (tunelab.core.lf_import.CONVERTERS): key -> tunelab field(s).
CONVERTED: dict[str, str] = {
    "bf16": "precision",
    "fp16": "precision",
    "pure_bf16": "dtype, precision",
    "quantization_bit": "quantization",
    "quantization_method": "quantization",
    "flash_attn": "attn_implementation",
    "enable_liger_kernel": "booster",
    "disable_gradient_checkpointing": "gradient_checkpointing",
    "resume_from_checkpoint": "resume",
    "pref_loss": "stage, dpo_loss",
    "deepspeed": "strategy, deepspeed_config",
    "report_to": "report_to",
    "template": "template",
}

_TRAINS = "`tunelab train` always trains; evaluation is `tunelab eval` on the finished run"
_ENCODE = "tunelab encodes the dataset once per run and caches it; no worker settings"

# LLaMA-Factory keys with no tunelab equivalent: key -> the one-line reason shown when it is dropped.
UNSUPPORTED: dict[str, str] = {
    "do_train": _TRAINS,
    "do_eval": _TRAINS,
    "do_predict": _TRAINS,
    "predict_with_generate": _TRAINS,
    "overwrite_output_dir": "every run gets its own run directory; resume: true continues one",
    "ddp_timeout": "collective_timeout_s is in seconds and applies to every collective; set it yourself",
    "fsdp": "use strategy: fsdp2 (and fsdp_config for your own JSON)",
    "ray_num_workers": "Ray is not supported; use nproc_per_node / nnodes",
    "plot_loss": "the loss curve is always drawn: web UI, TensorBoard, events.jsonl",
    "preprocessing_batch_size": _ENCODE,
    "dataloader_num_workers": _ENCODE,
    "overwrite_cache": _ENCODE,
    "tokenized_path": _ENCODE,
    "save_only_model": "checkpoints always keep the optimizer state so that resume works",
    "per_device_eval_batch_size": "eval_loss uses batch_size",
    "eval_strategy": "eval_loss is computed every eval_steps when val_size > 0",
    "eval_dataset": "the eval split comes from val_size",
    "freeze_trainable_modules": "method freeze trains every module of the last freeze_trainable_layers layers",
    "use_unsloth": "tunelab's own fast path (booster: auto or fast) plays this role",
    "use_llama_pro": "LLaMA Pro block expansion is not supported",
    "use_galore": "GaLore is not supported",
    "use_badam": "BAdam is not supported",
    "use_apollo": "APOLLO is not supported",
    "use_adam_mini": "Adam-mini is not supported",
    "use_muon": "Muon is not supported",
    "trust_remote_code_args": "not supported",
    "upcast_layernorm": "not supported",
    "rope_scaling": "rope scaling is not set from the run config",
    "infer_backend": "chat and eval pick their engine themselves (see `tunelab chat --help`)",
    "ref_model": "the reference model is the base model",
    "hf_hub_token": "set HF_TOKEN in the environment instead",
    "cache_dir": "set HF_HOME in the environment instead",
}


def key_hint(name: str, fields: list[str] | dict) -> str | None:
    """The hint for an unknown key from the alias tables: the field to use instead, or why there is none."""
    target = RENAMED.get(name)
    if target is not None and target in fields:
        return f"LLaMA-Factory's {name!r} is {target!r} here"
    if name in CONVERTED and name not in fields:
        return f"LLaMA-Factory's {name!r} is {CONVERTED[name]!r} here (its values differ: see `tunelab import-config`)"
    if name in UNSUPPORTED:
        return f"LLaMA-Factory's {name!r} has no equivalent: {UNSUPPORTED[name]}"
    return None


def foreign_keys() -> set[str]:
    """Every LLaMA-Factory key this module knows."""
    return {*RENAMED, *CONVERTED, *UNSUPPORTED}
