"""Several processes, GPUs or hosts: the checks on a RunConfig's distributed fields and the FSDP2 / DeepSpeed
settings generated from them (pure data; services/launch.py writes them into the run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MULTI = ("ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3")
FSDP_FILE = "fsdp.json"
DEEPSPEED_FILE = "deepspeed.json"


def check_distributed(config: Any) -> None:
    """Raise ValueError (one line naming the field and the valid choices) for an inconsistent distributed setup."""
    world = config.nproc_per_node * config.nnodes
    if config.strategy == "none" and world > 1:
        raise ValueError(
            f"{'nproc_per_node' if config.nproc_per_node > 1 else 'nnodes'}: nproc_per_node {config.nproc_per_node} x "
            f"nnodes {config.nnodes} = {world} processes need a strategy "
            f"(strategy 'none' runs one process); valid strategies: {', '.join(MULTI)}"
        )
    if config.node_rank >= config.nnodes:
        raise ValueError(f"node_rank: {config.node_rank} is not below nnodes={config.nnodes} (valid: 0..{config.nnodes - 1})")
    if config.offload and config.strategy in ("none", "ddp"):
        raise ValueError(f"offload: needs strategy fsdp2, deepspeed_zero2 or deepspeed_zero3, not {config.strategy!r}")
    if config.fsdp_config and config.strategy != "fsdp2":
        raise ValueError(f"fsdp_config: used only with strategy 'fsdp2', not {config.strategy!r}")
    if config.deepspeed_config and not config.strategy.startswith("deepspeed"):
        raise ValueError(f"deepspeed_config: used only with strategy deepspeed_zero2 or deepspeed_zero3, not {config.strategy!r}")
    for name in ("fsdp_config", "deepspeed_config"):
        value = getattr(config, name)
        if value and not Path(value).expanduser().is_file():
            raise ValueError(f"{name}: {value!r} is not a file")
    if config.booster == "fast" and world > 1:
        raise ValueError("booster: 'fast' is single-process; valid choices with several processes: auto, liger, none")
    if config.quantization != "none" and config.strategy not in ("none", "ddp"):
        raise ValueError(
            f"strategy: {config.strategy!r} does not shard quantized (bitsandbytes) weights here; "
            "valid choices for qlora: none, ddp (each rank holds its own quantized copy)"
        )


def fsdp_settings(config: Any) -> dict[str, Any]:
    """transformers' ``fsdp_config`` for FSDP2: shard every decoder layer, save one full (consolidated) state dict."""
    return {
        "version": 2,
        "reshard_after_forward": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the model's _no_split_modules (its decoder layer class)
        "state_dict_type": "FULL_STATE_DICT",
        "cpu_offload": bool(config.offload),
        "cpu_ram_efficient_loading": False,
    }


def deepspeed_settings(config: Any) -> dict[str, Any]:
    """A DeepSpeed ZeRO-2/3 config; "auto" values are filled by transformers from the TrainingArguments."""
    stage = 3 if config.strategy == "deepspeed_zero3" else 2
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if config.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # the final save is one consolidated model
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }
