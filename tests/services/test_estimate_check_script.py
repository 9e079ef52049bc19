"""benchmarks/estimate_check.py still imports and finds its device through today's service modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "estimate_check.py"


def test_estimate_check_finds_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ and src/ first
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: the CPU and the host's RAM
    spec = importlib.util.spec_from_file_location("estimate_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name, memory = module.device()
    assert name == "CPU" and memory > 0
