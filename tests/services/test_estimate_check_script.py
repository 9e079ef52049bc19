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


def test_leave_one_out_predicts_each_plain_row_from_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.core import estimate_model
    from tunelab.core.calibration import load_rows

    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("estimate_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fitted = estimate_model.CAL["plain_bytes"]
    rows = load_rows(SCRIPT.parent / "results" / "estimate-check.json")
    lines = module.leave_one_out(rows).splitlines()[2:]
    plain = [r["name"] for r in rows if r["overrides"].get("booster") == "none"]
    assert [line.split(" | ")[0].strip("| ") for line in lines] == plain and len(plain) >= 3
    assert estimate_model.CAL["plain_bytes"] == fitted  # the constant is put back
    refits = {float(line.split(" | ")[1]) for line in lines}
    assert len(refits) > 1, "each row left out refits the constant on the others"
