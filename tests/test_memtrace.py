"""benchmarks/memtrace/analyze.py: the summary of an allocator trace (a synthetic snapshot in the layout
torch.cuda.memory._snapshot() returns; no GPU here)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "memtrace"))

from analyze import summarize  # noqa: E402

MIB = 2**20


def frames(*names: str) -> list[dict]:
    return [{"filename": f"/x/site-packages/torch/{n}.py" if n.startswith("torch") else f"/w/src/tunelab/engine/{n}.py",
             "line": 1, "name": n.split("/")[-1]} for n in names]


def test_growth_is_charged_to_its_code_and_streams_are_kept_apart() -> None:
    trace = [
        {"action": "segment_map", "addr": 0, "size": 100 * MIB, "stream": 0, "frames": frames("torch/nn", "model")},
        {"action": "alloc", "addr": 0, "size": 100 * MIB, "stream": 0, "frames": frames("model")},
        {"action": "segment_alloc", "addr": 1, "size": 20 * MIB, "stream": 7, "frames": frames("fast/checkpoint")},
        {"action": "alloc", "addr": 1, "size": 20 * MIB, "stream": 7, "frames": frames("fast/checkpoint")},
        {"action": "alloc", "addr": 2, "size": 30 * MIB, "stream": 0, "frames": frames("fast/loss")},
        {"action": "free_requested", "addr": 1, "size": 20 * MIB, "stream": 7, "frames": []},
        {"action": "free_completed", "addr": 1, "size": 20 * MIB, "stream": 7, "frames": []},
        {"action": "free_completed", "addr": 2, "size": 30 * MIB, "stream": 0, "frames": []},
    ]
    snapshot = {"device_traces": [trace], "segments": [
        {"stream": 0, "segment_type": "large", "total_size": 130 * MIB, "allocated_size": 100 * MIB},
        {"stream": 7, "segment_type": "large", "total_size": 20 * MIB, "allocated_size": 0},
    ]}
    out = summarize(snapshot, {"reserved_bytes.all.peak": 150 * MIB, "num_alloc_retries": 0})
    assert out["trace"]["peak_allocated_gib"] == round(150 / 1024, 3)
    assert out["trace"]["growth_events"] == 2
    sites = {row["site"].split(":")[0]: row["gib"] for row in out["growth_by_site"]}
    assert sites == {"tunelab/engine/model.py": round(100 / 1024, 3), "tunelab/engine/fast/checkpoint.py": round(20 / 1024, 3)}
    assert out["segments_now"]["stream 7 large"] == {"count": 1, "total_gib": 0.02, "allocated_gib": 0.0}
    live = {row["site"].split(":")[0] for row in out["live_at_allocated_peak"]}
    assert live == {"tunelab/engine/model.py", "tunelab/engine/fast/checkpoint.py", "tunelab/engine/fast/loss.py"}
    assert out["stats"] == {"reserved_bytes.all.peak": round(150 / 1024, 3), "num_alloc_retries": 0}
