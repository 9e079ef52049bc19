"""Summarize a CUDA allocator snapshot with history (torch.cuda.memory._snapshot() after
_record_memory_history): what grew reserved memory, where the segments are now (per stream) and what was live at
the allocated peak. Pure Python over the snapshot's dicts; sitecustomize.py calls it at exit."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

GIB = 2**30
STATS = ["allocated_bytes.all.peak", "reserved_bytes.all.peak", "active_bytes.all.peak", "requested_bytes.all.peak",
         "inactive_split_bytes.all.peak", "num_alloc_retries", "num_device_alloc", "num_device_free", "num_ooms"]
GROW = ("segment_alloc", "segment_map")
SHRINK = ("segment_free", "segment_unmap")
LIBRARY = ("torch/", "contextlib", "<frozen", "functools", "threading", "accelerate/")


def where(frames: list[dict] | None, depth: int = 4) -> str:
    """The innermost ``depth`` frames outside torch and the standard library, innermost first."""
    kept = []
    for frame in frames or []:
        name = frame.get("filename", "")
        if any(part in name for part in LIBRARY) and "tunelab" not in name:
            continue
        short = name.split("site-packages/")[-1].split("/src/")[-1]
        kept.append(f"{short}:{frame.get('line')}:{frame.get('name')}")
        if len(kept) == depth:
            break
    return " <- ".join(kept)


def _by_site(entries: list[dict], top: int) -> list[dict[str, Any]]:
    sites: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in entries:
        site = sites[where(entry.get("frames"))]
        site[0] += entry["size"]
        site[1] += 1
    rows = [{"site": k, "gib": round(v[0] / GIB, 3), "count": v[1]} for k, v in sites.items()]
    return sorted(rows, key=lambda r: -r["gib"])[:top]


def summarize(snapshot: dict, stats: dict, top: int = 30) -> dict[str, Any]:
    """The summary sitecustomize.py writes (sizes in GiB)."""
    out: dict[str, Any] = {"stats": {k: round(stats[k] / GIB, 3) if "bytes" in k else stats[k] for k in STATS if k in stats}}
    segments: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for seg in snapshot.get("segments", []):
        row = segments[f"stream {seg['stream']} {seg['segment_type']}"]
        row[0] += 1
        row[1] += seg["total_size"]
        row[2] += seg["allocated_size"]
    out["segments_now"] = {k: {"count": c, "total_gib": round(t / GIB, 3), "allocated_gib": round(a / GIB, 3)}
                           for k, (c, t, a) in segments.items()}
    trace = snapshot["device_traces"][0] if snapshot.get("device_traces") else []
    allocated = reserved = peak_allocated = peak_reserved = 0
    peak_at, growth = -1, []
    for i, event in enumerate(trace):
        action, size = event["action"], event["size"]
        if action == "alloc":
            allocated += size
            if allocated > peak_allocated:
                peak_allocated, peak_at = allocated, i
        elif action == "free_completed":
            allocated -= size
        elif action in GROW:
            reserved += size
            peak_reserved = max(peak_reserved, reserved)
            growth.append(event)
        elif action in SHRINK:
            reserved -= size
    out["trace"] = {"entries": len(trace), "peak_allocated_gib": round(peak_allocated / GIB, 3),
                    "peak_reserved_gib": round(peak_reserved / GIB, 3), "growth_events": len(growth)}
    out["growth_by_site"] = _by_site(growth, top)
    live: dict[int, dict] = {}
    for event in trace[: peak_at + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
    out["live_at_allocated_peak"] = _by_site(list(live.values()), top)
    return out
