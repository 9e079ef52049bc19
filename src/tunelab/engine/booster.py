"""Choose and apply the run's speed-up (``booster``): tunelab's fast path, liger-kernel, or plain transformers.

``auto`` takes the fast path on a CUDA GPU when the model and method allow it and says why not otherwise; an
explicit ``fast`` that cannot run is a user error (on the CPU it runs, with PyTorch ops instead of Triton).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

from tunelab.core.config import ConfigError, RunConfig

log = logging.getLogger(__name__)


@dataclass
class BoosterChoice:
    """What the run uses, and why."""

    mode: str  # fast | liger | none
    reason: str
    options: Any = None  # FastOptions for mode == "fast"
    patch: Any = field(default=None, repr=False)


def fast_options(config: RunConfig) -> Any:
    """The FastOptions a config asks for."""
    from tunelab.engine.fast.model import FastOptions

    checkpointing = config.fast_checkpointing
    if checkpointing == "auto":
        checkpointing = "offload" if config.gradient_checkpointing else "none"
    return FastOptions(kernels=config.fast_kernels, fused_ce=config.fast_fused_ce,
                       padding_free=config.fast_padding_free, checkpointing=checkpointing)


def _config_blocker(config: RunConfig) -> str | None:
    if config.method not in ("lora", "qlora"):
        return f"method {config.method!r} (the fast path covers lora and qlora)"
    if config.quantization == "8bit":
        return "8-bit quantization"
    if config.use_dora:
        return "DoRA"
    if config.lora_dropout > 0:
        return "lora_dropout > 0"
    return None


def choose_booster(config: RunConfig, model: Any, stage_blocker: str | None = None) -> BoosterChoice:
    """Decide the booster for a loaded (not yet adapted) model; ``stage_blocker`` says why the run's stage rules
    out the fast path (and liger-kernel), if it does."""
    import torch

    if config.booster == "none":
        return BoosterChoice("none", "booster: none")
    if stage_blocker and config.booster in ("fast", "liger"):
        raise ConfigError(f"booster: {config.booster!r} does not support {stage_blocker}; valid choices here: auto, none")
    if stage_blocker:
        return BoosterChoice("none", f"auto: plain transformers ({stage_blocker})")
    if config.booster == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError("booster: 'liger' needs the liger-kernel package (pip install liger-kernel)")
        return BoosterChoice("liger", "booster: liger")
    blocker = _config_blocker(config)
    if blocker is None:
        from tunelab.engine.fast.model import SUPPORTED_TYPES

        kind = getattr(model.config, "model_type", "?")
        if kind not in SUPPORTED_TYPES:
            blocker = f"model type {kind!r} (the fast path covers {', '.join(SUPPORTED_TYPES)})"
    if config.booster == "fast":
        if blocker:
            raise ConfigError(f"booster: 'fast' does not support {blocker}; valid choices here: auto, liger, none")
        return BoosterChoice("fast", "booster: fast", fast_options(config))
    if blocker:
        return BoosterChoice("none", f"auto: plain transformers ({blocker})")
    if not torch.cuda.is_available():
        return BoosterChoice("none", "auto: plain transformers (no CUDA GPU)")
    return BoosterChoice("fast", "auto: fast path", fast_options(config))


def apply_booster(choice: BoosterChoice, model: Any, config: RunConfig) -> BoosterChoice:
    """Install the fast path on an adapted model; if the model turns out unsupported, fall back (auto) or fail."""
    if choice.mode != "fast":
        return choice
    from tunelab.engine.fast.lora import Unsupported
    from tunelab.engine.fast.model import apply_fast_path

    try:
        choice.patch = apply_fast_path(model, choice.options)
    except Unsupported as exc:
        if config.booster == "fast":
            raise ConfigError(f"booster: 'fast' does not support {exc}; valid choices here: auto, liger, none") from None
        log.warning("fast path unavailable (%s): plain transformers", exc)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return BoosterChoice("none", f"auto: plain transformers ({exc})")
    return choice
