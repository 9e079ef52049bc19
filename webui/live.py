"""Live view of one run: plot tables (loss with smoothing and eval loss, learning rate, tokens/s), the progress
bar with ETA, and the log tail, all built from the shared, incrementally read RunMetrics."""

from __future__ import annotations

import html
import time
from typing import Any

from tunelab.services.history import RunMetrics, smooth

MAX_POINTS = 2000  # plots thin out longer runs to at most this many points per series


def _thin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) <= MAX_POINTS:
        return rows
    step = len(rows) / MAX_POINTS
    picked = [rows[int(i * step)] for i in range(MAX_POINTS - 1)]
    return picked + [rows[-1]]


def _frame(rows: list[tuple], columns: list[str], kinds: list[str]) -> Any:
    """A DataFrame with fixed column types, even when empty (an empty object column would make the plot
    treat its axis as categories for good)."""
    import pandas as pd

    data = list(zip(*rows)) if rows else [[] for _ in columns]
    return pd.DataFrame({c: pd.Series(list(v), dtype=k) for c, v, k in zip(columns, data, kinds)})


def loss_frame(metrics: RunMetrics, smoothing: float, names: dict[str, str]) -> Any:
    """Long-format table for the loss plot: raw loss, smoothed loss and eval loss against step."""
    train = _thin(metrics.train)
    steps = [e["step"] for e in train]
    losses = [e["loss"] for e in train]
    rows = [(s, v, names["loss"]) for s, v in zip(steps, losses)]
    if smoothing > 0 and losses:
        rows += [(s, v, names["smoothed"]) for s, v in zip(steps, smooth(losses, smoothing))]
    rows += [(e["step"], e["eval_loss"], names["eval_loss"]) for e in metrics.eval if e.get("eval_loss") is not None]
    return _frame(rows, ["step", "value", "series"], ["int64", "float64", "string"])


def series_frame(metrics: RunMetrics, key: str) -> Any:
    """Table of one train-event field (lr, tokens_per_s) against step."""
    rows = [(e["step"], e[key]) for e in _thin(metrics.train) if e.get(key) is not None]
    return _frame(rows, ["step", key], ["int64", "float64"])


def overlay_frame(runs: dict[str, RunMetrics], smoothing: float) -> Any:
    """Loss of several runs in one table (one series per run) for comparison."""
    rows = []
    for run_id, metrics in runs.items():
        train = _thin(metrics.train)
        losses = [e["loss"] for e in train]
        values = smooth(losses, smoothing) if smoothing > 0 else losses
        rows += [(e["step"], v, run_id) for e, v in zip(train, values)]
    return _frame(rows, ["step", "loss", "run"], ["int64", "float64", "string"])


def format_duration(seconds: float | None) -> str:
    """'1:02:03' / '4:05' / '—'."""
    if seconds is None:
        return "—"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_html(metrics: RunMetrics | None, state: str, words: dict[str, str]) -> str:
    """A progress bar with step, percentage, ETA, tokens/s and the run's state."""
    last = metrics.last if metrics else {}
    step, total = last.get("step") or 0, last.get("total_steps") or 0
    fraction = min(step / total, 1.0) if total else (1.0 if state == "succeeded" else 0.0)
    eta = last.get("eta_s") if state == "running" else None
    if state == "running" and last.get("time") and eta is not None:
        eta = max(eta - (time.time() - last["time"]), 0)
    bits = [f"{words['step']} {step}/{total or '?'}", f"{fraction:.0%}"]
    if state == "running" and not last:
        bits = [words["preparing"]]
    if eta is not None:
        bits.append(f"{words['eta']} {format_duration(eta)}")
    if last.get("tokens_per_s"):
        bits.append(f"{last['tokens_per_s']:.0f} {words['tokens_per_s']}")
    if last.get("loss") is not None:
        bits.append(f"{words['loss']} {last['loss']:.4f}")
    label = html.escape(" · ".join(bits))
    state_text = html.escape(words.get(f"state.{state}", state))
    return (
        f'<div class="tl-progress" data-state="{html.escape(state)}" data-step="{step}" data-total="{total}">'
        f'<div class="tl-progress-head"><span class="tl-state tl-state-{html.escape(state)}">{state_text}</span>'
        f"<span>{label}</span></div>"
        f'<div class="tl-bar"><div class="tl-fill" style="width:{fraction * 100:.1f}%"></div></div></div>'
    )
