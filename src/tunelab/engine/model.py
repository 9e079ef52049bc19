"""Load a model and tokenizer for a run and apply the method: full, freeze, LoRA (and variants) or QLoRA."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, RunConfig
from tunelab.engine.vlm import (
    VISION_PARTS,
    freeze_parts,
    is_vlm,
    is_vlm_model,
    lora_target_regex,
    projector_modules,
)

log = logging.getLogger(__name__)


def resolve_model_path(model: str, progress: Any = None) -> str:
    """'demo' -> the (built on demand, ``progress`` hearing (done, total)) demo model folder; anything else unchanged."""
    if model == "demo":
        from tunelab.engine.demo import build_demo_model

        return str(build_demo_model(progress=progress))
    if model == "demo-vlm":
        from tunelab.engine.vlm_demo import build_demo_vlm

        return str(build_demo_vlm())
    return model


SMALL_MODEL_PARAMS = 100_000_000


def set_cpu_threads(model: Any) -> int | None:
    """On CPU, a model under 100M parameters runs on one torch thread unless OMP_NUM_THREADS says otherwise: its
    small matrix products gain little from a second thread and lose much to each hand-off when other programs share
    the cores (the demo's first 2 steps: 1.2 s on one thread, 25 s on two, on a loaded 2-core machine). Returns the
    thread count set (None: torch's default kept)."""
    import os

    import torch

    if torch.cuda.is_available() or os.environ.get("OMP_NUM_THREADS"):
        return None
    if sum(p.numel() for p in model.parameters()) >= SMALL_MODEL_PARAMS:
        return None
    torch.set_num_threads(1)
    return 1


def local_dir(model: str) -> Path | None:
    """The model's local folder, if it is one."""
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer (fast where possible), with a pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model: {path!r} could not be loaded ({' '.join(str(exc).split())[:300]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def compute_dtype(config: RunConfig) -> Any:
    """The torch dtype for training compute, per ``precision`` and the hardware."""
    import torch

    precision = config.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("precision: 'fp16' needs a CUDA GPU; valid choices on CPU: fp32, bf16, auto")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_model(config: RunConfig, path: str, auto_class: Any = None, **extra: Any) -> Any:
    """Load the model (the causal LM unless ``auto_class`` says otherwise) with the configured dtype, attention
    and quantization."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(config)
    load_dtype = dtype if config.dtype == "auto" else {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[config.dtype]
    vlm = is_vlm(path, config.trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": load_dtype, "trust_remote_code": config.trust_remote_code}
    if config.attn_implementation != "auto":
        kwargs["attn_implementation"] = config.attn_implementation
    if config.quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=config.quant_type, bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=_vision_skips() if vlm else None,
        )
    elif config.quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=_vision_skips() if vlm else None)
    if config.quantization != "none" and torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if auto_class is None and vlm:
        from transformers import AutoModelForImageTextToText as auto_class
    model = (auto_class or AutoModelForCausalLM).from_pretrained(path, **kwargs, **extra)
    model.config.use_cache = False  # training: no KV cache, and packed rows need it off for per-example attention
    return model


def _vision_skips() -> list[str]:
    """Modules QLoRA leaves unquantized in a VLM: the vision tower, the projector and the head."""
    return [*VISION_PARTS, "multi_modal_projector", "lm_head"]


def lora_targets(config: RunConfig) -> str | list[str]:
    """peft target_modules for ``lora_target``."""
    if config.lora_target.strip() == "all":
        return "all-linear"
    return [name.strip() for name in config.lora_target.split(",") if name.strip()]


def apply_method(model: Any, config: RunConfig, fast: bool = False) -> Any:
    """Make only the right parameters trainable: LoRA adapters, the last layers, or everything. With ``fast`` (the
    fast path takes over), 4-bit models keep their bf16 norms/head and checkpointing is left to the fast layers."""
    if config.method in ("lora", "qlora"):
        return _apply_lora(model, config, fast)
    if config.method == "freeze":
        _freeze_all_but_last(model, config.freeze_trainable_layers)
    if is_vlm_model(model):
        freeze_parts(model, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _apply_lora(model: Any, config: RunConfig, fast: bool = False) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if fast:
        pass  # no fp32 upcasts (the fast kernels compute norms and the loss in fp32) and no HF checkpointing
    elif config.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    reward_head = config.stage == "rm"  # a sequence-classification head: new, so it trains in full
    vlm = is_vlm_model(model)
    saved = ["score"] if reward_head else projector_modules(model) if vlm and config.train_projector else None
    lora = LoraConfig(
        task_type="SEQ_CLS" if reward_head else "CAUSAL_LM", modules_to_save=saved,
        r=config.lora_rank, lora_alpha=config.effective_lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=lora_target_regex(model, config) if vlm else lora_targets(config), use_dora=config.use_dora,
        use_rslora=config.use_rslora, init_lora_weights="pissa" if config.pissa_init else True,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"lora_target: {config.lora_target!r} does not fit this model: {exc}") from None


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _freeze_all_but_last(model: Any, trainable_layers: int) -> None:
    total = model.config.get_text_config().num_hidden_layers
    if trainable_layers > total:
        raise ConfigError(f"freeze_trainable_layers: {trainable_layers} is more than the model's {total} layers")
    first = total - trainable_layers
    for name, param in model.named_parameters():
        match = _LAYER.search(name)
        head = name.split(".")[0] == "score"  # a reward model's new head always trains
        param.requires_grad = bool(match and int(match.group(1)) >= first) or head
    log.info("freeze: training layers %d..%d of %d", first, total - 1, total)


def trainable_summary(model: Any) -> dict[str, int]:
    """Trainable and total parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}
