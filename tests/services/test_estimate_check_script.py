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


def _product_bench(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("product_bench", SCRIPT.parent / "product_bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("trained", [5, 4])
def test_a_run_failing_after_its_last_step_is_still_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             trained: int) -> None:
    """A full 8B run trains every step and then fails at its final save (disk full): its steps are measured and the
    row says so; a run that failed before its last step is not measured."""
    import json

    bench = _product_bench(monkeypatch)
    events = [{"type": "train", "step": s, "loss": 1.0, "elapsed_s": 0.5 * s, "tokens_seen": 100 * s,
               "peak_mem_gb": 2.0, "peak_reserved_gb": 2.5} for s in range(1, trained + 1)]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    (tmp_path / "status.json").write_text(json.dumps({"state": "failed", "error": "OSError: No space left on device"}))
    run = f"print('run directory: {tmp_path}'); raise SystemExit(1)"
    result = bench.measured_run([sys.executable, "-c", run, "max_steps=5"], 60, 2)
    assert result["run_dir"] == str(tmp_path)
    if trained == 5:
        assert result["tokens_per_s"] == 200.0 and result["peak_reserved_gib"] == 2.5
        assert "No space left" in result["failed_after_training"]
    else:
        assert "tokens_per_s" not in result and result["error"].startswith("exit 1")
