"""The CUDA devices the scheduler hands out, found without importing torch (nvidia-smi, CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    """One CUDA device as the scheduler sees it (``index`` is what goes into CUDA_VISIBLE_DEVICES)."""

    index: str
    name: str = ""
    memory_mib: int | None = None

    @property
    def label(self) -> str:
        """A short human-readable label: 'GPU 0: NVIDIA H100 (80 GiB)'."""
        memory = f" ({self.memory_mib / 1024:.0f} GiB)" if self.memory_mib else ""
        return f"GPU {self.index}: {self.name or 'CUDA device'}{memory}"


def _nvidia_smi(binary: str) -> list[Gpu]:
    try:
        out = subprocess.run(
            [binary, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            gpus.append(Gpu(parts[0], parts[1], int(parts[2]) if parts[2].isdigit() else None))
    return gpus


def detect_gpus(env: Mapping[str, str] | None = None, nvidia_smi: str | None = "auto") -> list[Gpu]:
    """CUDA devices without importing torch: nvidia-smi's list, narrowed by CUDA_VISIBLE_DEVICES if set."""
    env = os.environ if env is None else env
    binary = shutil.which("nvidia-smi") if nvidia_smi == "auto" else nvidia_smi
    listed = _nvidia_smi(binary) if binary else []
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return listed
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if not ids or ids[0] == "-1" or ids[0].lower() == "none":
        return []
    by_index = {gpu.index: gpu for gpu in listed}
    return [by_index.get(i, Gpu(i)) for i in ids]
