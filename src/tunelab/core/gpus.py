"""GPU classes the estimator knows: memory, dense bf16 tensor TFLOP/s and memory bandwidth, as data.

Figures are the vendors' datasheet numbers (dense, no sparsity; GeForce cards at their FP32-accumulate rate, which is
what PyTorch's bf16 matmuls use). Memory is what nvidia-smi reports as memory.total, in GiB. Only the H100 and H200
rows have been checked against measured runs (benchmarks/results/); the others scale the same fitted efficiencies by
their datasheet rates and are marked so in the estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CPU = "CPU"


@dataclass(frozen=True)
class GpuClass:
    """One kind of device."""

    name: str
    match: tuple[str, ...]  # lower-case substrings of nvidia-smi's name, all of which must appear
    memory_gib: float
    bf16_tflops: float
    bandwidth_gbs: float
    measured: bool = False  # calibrated against measured runs of this class


# most specific first: the first whose every substring appears in nvidia-smi's name wins
GPU_CLASSES: tuple[GpuClass, ...] = (
    GpuClass("H200", ("h200",), 140.4, 989.0, 4800.0, measured=True),
    GpuClass("H100 NVL", ("h100", "nvl"), 93.6, 835.0, 3900.0),
    GpuClass("H100 PCIe", ("h100", "pcie"), 79.6, 756.0, 2000.0),
    GpuClass("H100", ("h100",), 79.6, 989.0, 3350.0, measured=True),
    GpuClass("A100 80GB", ("a100", "80g"), 79.3, 312.0, 2039.0),
    GpuClass("A100 40GB", ("a100",), 39.4, 312.0, 1555.0),
    GpuClass("L40S", ("l40s",), 44.4, 362.0, 864.0),
    GpuClass("RTX 4090", ("4090",), 23.6, 165.0, 1008.0),
    GpuClass(CPU, ("cpu",), 0.0, 1.0, 50.0),  # memory: the host's RAM; speed: a rough guess, not calibrated
)
GENERIC = GpuClass("unknown GPU", (), 0.0, 312.0, 1555.0)  # an unlisted CUDA device: A100-40GB-like speed


def gpu_class(name: str) -> GpuClass:
    """The class of an nvidia-smi device name ('NVIDIA H100 80GB HBM3' -> H100), or GENERIC."""
    lowered = name.lower()
    for gpu in GPU_CLASSES:
        if gpu.match and all(part in lowered for part in gpu.match):
            return gpu
    return GENERIC


def by_name(name: str) -> GpuClass | None:
    """A class by its table name, case-insensitively ('h100', 'RTX 4090', 'cpu')."""
    wanted = name.strip().lower()
    return next((g for g in GPU_CLASSES if g.name.lower() == wanted), None)


def class_names() -> list[str]:
    """The table's names, in table order."""
    return [g.name for g in GPU_CLASSES]


def host_memory_gib() -> float:
    """This machine's RAM in GiB (what a CPU run may use)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
