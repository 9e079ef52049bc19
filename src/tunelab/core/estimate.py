"""Peak GPU memory, tokens/s and time per epoch of a run, before it starts (pure Python: no torch).

    estimate(config, shape, device, data) -> Estimate

The cost model is tunelab.core.estimate_model. ``benchmarks/estimate_check.py`` measures rows on a GPU and writes
estimate vs measured; tests/core/test_estimate.py keeps every committed row within 20%.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.estimate_model import (
    CAL,
    FAST_STAGES,
    GIB,
    PAIR_STAGES,
    Device,
    batch_tokens,
    expected_path,
    memory_parts,
    offloaded_gib,
    slack_gib,
    step_seconds,
)
from tunelab.core.gpus import CPU, GPU_CLASSES, host_memory_gib
from tunelab.core.model_shape import ModelShape

__all__ = ["DataSize", "Device", "Estimate", "cpu_device", "estimate", "format_duration"]
TIGHT_SHARE = 0.10  # a margin under this share of the need is within the memory estimate's error (worst row: 8%)


def cpu_device() -> Device:
    """This machine's CPU as the device, with the host's RAM as its memory."""
    cpu = next(g for g in GPU_CLASSES if g.name == CPU)
    return Device(CPU, cpu, round(host_memory_gib(), 1))


@dataclass(frozen=True)
class DataSize:
    """How much one epoch holds: examples and tokens (lengths uncut; the cutoff is applied here)."""

    examples: int
    lengths: tuple[int, ...]  # per example, or empty when only the mean is known
    mean_length: float
    source: str  # how the lengths were obtained, said in the estimate

    def cut(self, cutoff: int) -> list[int]:
        """Per-example lengths after the cutoff (the mean repeated when lengths are unknown)."""
        if self.lengths:
            return [min(n, cutoff) for n in self.lengths]
        return [min(round(self.mean_length), cutoff)] * self.examples


@dataclass
class Estimate:
    """The estimate, in GiB, seconds and tokens/s."""

    device: str
    memory_gib: float
    path: str  # fast | none | liger
    path_reason: str
    allocated_gib: float
    reserved_gib: float
    needed_gib: float  # reserved + what lives outside the allocator: compare with the device's memory
    fits: bool
    tight: bool  # fits, but by less than the estimate's error
    margin_gib: float
    tokens_per_s: float
    step_s: float
    tokens_per_step: float
    steps_per_epoch: int | None
    epoch_s: float | None
    epoch_tokens: int | None
    pinned_host_gib: float
    parts_gib: dict[str, float]
    data_source: str
    calibrated: bool
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # cheaper settings, when it does not fit or is tight

    def as_event(self) -> dict[str, Any]:
        """The fields an ``estimate`` event carries (rounded)."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        """'~18.9 GiB of 80 GiB on GPU 0: NVIDIA H100, ~9,800 tok/s, ~14 min/epoch'."""
        cpu = self.device == CPU
        epoch = f", ~{format_duration(self.epoch_s)}/epoch" if self.epoch_s else ""
        return (f"~{self.needed_gib if cpu else self.reserved_gib:.1f} GiB of {self.memory_gib:.0f} GiB on "
                f"{'CPU (RAM)' if cpu else self.device}, "
                f"~{self.tokens_per_s:,.0f} tok/s{epoch}")

    def verdict(self) -> str:
        """'fits (61.0 GiB to spare)', 'may not fit: ...' or 'does not fit: needs 12.3 GiB more than ... has'."""
        if not self.fits:
            return f"does not fit: needs {-self.margin_gib:.1f} GiB more than {self.device} has"
        if self.tight:
            return (f"may not fit: {self.margin_gib:.1f} GiB to spare is within the estimate's error "
                    f"(~{TIGHT_SHARE:.0%})")
        return f"fits ({self.margin_gib:.1f} GiB to spare)"


def format_duration(seconds: float | None) -> str:
    """'45 s', '14 min', '3.2 h'."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- the estimate ---------------------------------------------------------------------------------------------


def estimate(config: RunConfig, shape: ModelShape, device: Device, data: DataSize | None = None,
             hints: bool = True) -> Estimate:
    """Peak memory, speed and time per epoch of ``config`` on ``device`` (with ``hints``: what would fit better)."""
    path, reason = expected_path(config, shape, device)
    lengths = data.cut(config.cutoff_len) if data else []
    real, computed, context = batch_tokens(config, path, lengths)
    parts = memory_parts(config, shape, path, computed, device)
    allocated = parts.pop("peak") / GIB
    pinned = 0.0 if device.is_cpu else offloaded_gib(config, shape, path, computed)
    if device.is_cpu:
        reserved, needed = allocated, allocated + 1.5  # + the process itself (python, torch, transformers)
    else:
        reserved = allocated + slack_gib(path, parts, pinned)
        needed = reserved + CAL["context_gib"]
    step = step_seconds(config, shape, path, computed, context, device)
    steps = epoch_s = epoch_tokens = None
    if data and data.examples:
        epoch_tokens = sum(lengths) * (2 if config.stage in PAIR_STAGES else 1)
        per_step = real if config.packing else config.batch_size
        count = epoch_tokens if config.packing else data.examples
        steps = max(1, math.ceil(count / per_step / config.world_size))
        epoch_s = steps * step
    notes = _notes(config, shape, device, path)
    margin = device.memory_gib - needed
    result = Estimate(
        device=device.label, memory_gib=device.memory_gib, path=path, path_reason=reason,
        allocated_gib=allocated, reserved_gib=reserved, needed_gib=needed, fits=margin >= 0,
        tight=0 <= margin < TIGHT_SHARE * needed, margin_gib=margin, tokens_per_s=real / step, step_s=step, tokens_per_step=real,
        steps_per_epoch=steps, epoch_s=epoch_s, epoch_tokens=epoch_tokens, pinned_host_gib=pinned,
        parts_gib={k: round(v / GIB, 3) for k, v in parts.items() if v}, data_source=data.source if data else "no data",
        calibrated=device.gpu.measured and config.stage in FAST_STAGES and config.strategy == "none", notes=notes,
    )
    if hints and (margin < TIGHT_SHARE * needed):
        result.hints = cheaper(config, shape, device, data, needed)
    return result


ALTERNATIVES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("optimizer=adamw_torch_fused", {"optimizer": "adamw_torch_fused"}),
    ("optimizer=adamw_8bit", {"optimizer": "adamw_8bit"}),
    ("gradient_checkpointing=true", {"gradient_checkpointing": True}),
    ("method=qlora", {"method": "qlora", "quantization": "4bit"}),
    ("batch_size=1", {"batch_size": 1}),
)


def cheaper(config: RunConfig, shape: ModelShape, device: Device, data: DataSize | None, needed: float) -> list[str]:
    """Single changes that cut the memory needed, biggest saving first: 'optimizer=adamw_8bit: ~47.9 GiB'."""
    found = []
    for label, change in ALTERNATIVES:
        if all(getattr(config, k) == v for k, v in change.items()):
            continue
        try:
            other = RunConfig.model_validate({**config.model_dump(), **change})  # the change must make a valid config
        except ValueError:
            continue
        alt = estimate(other, shape, device, data, hints=False)
        if alt.needed_gib < needed - 0.5:
            found.append((alt.needed_gib, f"{label}: ~{alt.needed_gib:.1f} GiB"))
    return [text for _, text in sorted(found)[:3]]


def _notes(config: RunConfig, shape: ModelShape, device: Device, path: str) -> list[str]:
    """What the estimate does not model for this config."""
    notes = []
    if device.is_cpu:
        notes.append("CPU: a rough figure (from tiny-model runs on a shared 2-core machine)")
    elif not device.gpu.measured:
        notes.append(f"{device.gpu.name}: speed scaled from datasheet rates, not measured")
    if config.stage not in FAST_STAGES:
        notes.append(f"stage {config.stage}: training memory only; calibrated on sft")
    if config.stage in ("grpo", "rloo"):
        notes.append("generation time and memory are not included")
    if config.strategy != "none":
        notes.append(f"strategy {config.strategy}: memory per process without sharding (an upper bound)")
    if config.quantization == "8bit" or config.method == "freeze" or shape.moe_layers:
        notes.append("8-bit, freeze and MoE estimates are not calibrated on measured runs")
    return notes
