"""Calibration rows: one measured GPU run each (benchmarks/results/estimate-check.json), and the estimate for it.

A row holds everything the estimate needs (the model's config.json fields, the run's overrides, the GPU, the data's
size) beside what was measured, so the estimate can be recomputed at any time with the current constants.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.estimate import DataSize, Device, Estimate, estimate
from tunelab.core.gpus import gpu_class
from tunelab.core.model_shape import shape_from_config

SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "num_local_experts",
              "num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size")
COMPARED = (("peak_reserved_gib", "reserved_gib"), ("peak_allocated_gib", "allocated_gib"), ("tokens_per_s", "tokens_per_s"))


def shape_fields(config_json: dict[str, Any]) -> dict[str, Any]:
    """The config.json fields a row keeps (what ModelShape reads)."""
    return {k: config_json[k] for k in SHAPE_KEYS if k in config_json}


def row_estimate(row: dict[str, Any]) -> Estimate:
    """The estimate for a calibration row, with the current constants."""
    config = RunConfig(model="row", dataset=["row"], **row["overrides"])
    shape = shape_from_config(row["model_config"])
    device = Device(row["device"], gpu_class(row["device"]), row["gpu_memory_gib"])
    data = DataSize(row["data"]["examples"], (), row["data"]["mean_length"], "calibration row")
    return estimate(config, shape, device, data)


def row_errors(row: dict[str, Any]) -> dict[str, float]:
    """Relative error (estimate / measured - 1) of each compared figure the row measured."""
    est = row_estimate(row)
    measured = row["measured"]
    return {key: getattr(est, attr) / measured[key] - 1 for key, attr in COMPARED if measured.get(key)}


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """The measured rows of a results file (rows that failed to run are left out)."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))["rows"]
    return [r for r in rows if r.get("measured")]
