"""The estimator (pure logic): model shapes from config.json, monotone costs, method ordering, the fit verdict at the
GPU's size, and the committed GPU calibration rows staying within 20% of what was measured."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tunelab.core.calibration import COMPARED, load_rows, row_errors
from tunelab.core.config import RunConfig
from tunelab.core.estimate import DataSize, Device, estimate
from tunelab.core.estimate_model import FAST_TYPES
from tunelab.core.gpus import by_name, gpu_class
from tunelab.core.model_shape import load_shape, shape_from_config
from tunelab.core.schema import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LLAMA8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
LLAMA3B = dict(LLAMA8B, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               tie_word_embeddings=True)
QWEN7B = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4)
H100 = Device("GPU 0: NVIDIA H100 80GB HBM3", gpu_class("NVIDIA H100 80GB HBM3"), 79.6)
DATA = DataSize(1000, (), 500.0, "test")


def run(shape: dict = LLAMA8B, device: Device = H100, **fields) -> object:
    base = dict(model="m", dataset=["d"], cutoff_len=2048, batch_size=2, lora_rank=16, gradient_checkpointing=True,
                packing=True)
    return estimate(RunConfig(**{**base, **fields}), shape_from_config(shape), device, DATA)


def test_parameter_counts_of_known_models() -> None:
    assert shape_from_config(LLAMA8B).total_params == pytest.approx(8.03e9, rel=0.005)
    assert shape_from_config(LLAMA3B).total_params == pytest.approx(3.21e9, rel=0.005)  # tied head counted once
    assert shape_from_config(QWEN7B).total_params == pytest.approx(7.62e9, rel=0.005)
    mixtral = shape_from_config(dict(LLAMA8B, model_type="mixtral", vocab_size=32000, num_local_experts=8,
                                     num_experts_per_tok=2))
    assert mixtral.total_params == pytest.approx(46.7e9, rel=0.01)
    assert mixtral.active_linear_params == pytest.approx(12.6e9, rel=0.02)  # 2 of 8 experts per token
    vlm = shape_from_config({"model_type": "llava", "text_config": LLAMA8B})  # a VLM is read through text_config
    assert vlm.model_type == "llama" and vlm.layers == 32


def test_hub_id_resolves_through_the_local_cache_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="no config.json for 'org/model'"):
        load_shape("org/model")
    snapshot = tmp_path / "models--org--model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(QWEN7B))
    assert load_shape("org/model").model_type == "qwen2"
    (snapshot / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is not readable JSON"):
        load_shape("org/model")


@pytest.mark.parametrize("field,values", [("batch_size", [1, 2, 4]), ("cutoff_len", [512, 2048, 8192]),
                                          ("lora_rank", [8, 64, 256])])
def test_memory_and_step_time_grow_with_batch_sequence_and_rank(field: str, values: list[int]) -> None:
    for path in ("fast", "none"):
        estimates = [run(booster=path, **{field: v}) for v in values]
        assert all(a.allocated_gib < b.allocated_gib for a, b in zip(estimates, estimates[1:])), (path, field)
        assert all(a.step_s <= b.step_s for a, b in zip(estimates, estimates[1:])), (path, field)


def test_qlora_needs_less_than_lora_than_full() -> None:
    for path in ("fast", "none"):
        qlora, lora = run(method="qlora", booster=path), run(method="lora", booster=path)
        assert qlora.allocated_gib < lora.allocated_gib < run(method="full").allocated_gib
    assert run(method="full").path == "none"  # the fast path covers lora and qlora only


def test_fit_verdict_flips_at_the_gpu_size() -> None:
    needed = run().needed_gib
    h100 = by_name("H100")
    assert h100 is not None
    roomy = run(device=Device("big", h100, needed * 1.5))
    tight = run(device=Device("edge", h100, needed + 0.1))
    short = run(device=Device("small", h100, needed - 0.1))
    assert roomy.fits and not roomy.tight and "fits" in roomy.verdict() and not roomy.hints
    assert tight.fits and tight.tight and tight.verdict().startswith("may not fit")
    assert not short.fits and short.verdict().startswith("does not fit: needs 0.1 GiB more")
    assert short.hints and all("GiB" in hint for hint in short.hints)


def test_full_fine_tuning_of_an_8b_is_at_the_limit_of_an_80_gib_h100() -> None:
    adamw = run(method="full")  # torch's foreach AdamW: bf16 weights, gradients, two moments and a step temporary
    assert not adamw.fits or adamw.tight, adamw.verdict()
    assert adamw.allocated_gib == pytest.approx(8.03e9 * 10 / 2**30, rel=0.02)
    assert any(h.startswith("optimizer=adamw_8bit") for h in adamw.hints)
    assert run(method="full", optimizer="adamw_8bit").fits
    assert run(method="lora").fits and not run(method="lora").tight


def test_epoch_time_follows_the_data() -> None:
    small = run()
    config = RunConfig(model="m", dataset=["d"], cutoff_len=2048, batch_size=2, packing=True)
    double = estimate(config, shape_from_config(LLAMA8B), H100, DataSize(2000, (), 500.0, "test"))
    assert small.epoch_s and double.epoch_s and double.epoch_s == pytest.approx(2 * small.epoch_s, rel=0.01)
    assert estimate(config, shape_from_config(LLAMA8B), H100, None).epoch_s is None  # unknown data: no time
    unpacked = config.model_copy(update={"packing": False, "booster": "none"})
    unknown = estimate(unpacked, shape_from_config(LLAMA8B), H100, None)  # rows assumed full length, not empty
    assert unknown.tokens_per_step == 2 * 2048 and unknown.parts_gib["saved_activations"] > 5


def test_calibration_rows_stay_within_20_percent() -> None:
    rows = load_rows(ROOT / "benchmarks" / "results" / "estimate-check.json")
    covered = {(r["model_config"]["model_type"], r["overrides"]["method"], r["overrides"]["booster"]) for r in rows}
    for wanted in [("llama", "lora", "fast"), ("llama", "lora", "none"), ("llama", "qlora", "fast"),
                   ("qwen2", "lora", "fast"), ("qwen2", "lora", "none"), ("qwen2", "qlora", "fast"),
                   ("qwen2", "qlora", "none"), ("llama", "full", "none"), ("qwen2", "full", "none")]:
        assert wanted in covered, wanted
    misses = []
    for row in rows:
        for key, error in row_errors(row).items():
            if abs(error) > 0.20:
                misses.append(f"{row['name']} {key}: {error:+.0%}")
    assert not misses, misses
    assert sum(len(row_errors(r)) for r in rows) >= len(rows) * (len(COMPARED) - 1)


def test_fast_types_are_the_engines() -> None:
    tree = ast.parse((ROOT / "src" / "tunelab" / "engine" / "fast" / "model.py").read_text())
    found = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "SUPPORTED_TYPES" for t in node.targets))
    assert tuple(ast.literal_eval(found)) == FAST_TYPES
