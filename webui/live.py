"""Live view of one run: plot tables (loss with smoothing and eval loss, learning rate, tokens/s, and whichever
other metrics the run's events carry), the progress bar with ETA, and the log tail, all built from the shared,
incrementally read RunMetrics."""

from __future__ import annotations

import html
import time
from typing import Any

from tunelab.services.history import RunMetrics, smooth

MAX_POINTS = 2000  # plots thin out longer runs to at most this many points per series
PREPARE_STAGES = ("libraries", "demo", "tokenizer", "data", "tokenize", "model", "trainer", "steps", "evaluate", "save")
NOT_METRICS = {"v", "type", "time", "step", "total_steps", "epoch", "elapsed_s", "eta_s", "tokens_seen"}


def _thin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) <= MAX_POINTS:
        return rows
    step = len(rows) / MAX_POINTS
    picked = [rows[int(i * step)] for i in range(MAX_POINTS - 1)]
    return picked + [rows[-1]]


Series = dict[str, list[tuple[int, float]]]


def loss_series(metrics: RunMetrics, smoothing: float, names: dict[str, str]) -> Series:
    """The loss chart's lines: raw loss, smoothed loss and eval loss against step (named in the page's language)."""
    train = _thin(metrics.train)
    points = [(e["step"], float(e["loss"])) for e in train if _is_number(e.get("loss"))]
    out: Series = {names["loss"]: points}
    if smoothing > 0 and points:
        out[names["smoothed"]] = list(zip([s for s, _ in points], smooth([v for _, v in points], smoothing)))
    out[names["eval_loss"]] = _points(metrics, "eval_loss")
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def metric_names(metrics: RunMetrics) -> list[str]:
    """Every numeric metric the run's train and eval events carry: loss first, then the rest by name."""
    names = {k for e in [*metrics.train, *metrics.eval] for k, v in e.items() if k not in NOT_METRICS and _is_number(v)}
    return sorted(names, key=lambda n: (n != "loss", n))


def _points(metrics: RunMetrics, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, from eval events for eval_* names, else from train events."""
    events = metrics.eval if name.startswith("eval_") else _thin(metrics.train)
    return [(e["step"], float(e[name])) for e in events if _is_number(e.get(name))]


def metric_series(metrics: RunMetrics | None, names: list[str]) -> Series:
    """One line per chosen metric against step."""
    return {name: _points(metrics, name) for name in names} if metrics is not None else {}


def overlay_series(runs: dict[str, RunMetrics], smoothing: float, metric: str = "loss") -> Series:
    """One metric of several runs (one line per run, named by the run id) for comparison."""
    out: Series = {}
    for run_id, metrics in runs.items():
        points = _points(metrics, metric)
        if smoothing > 0 and points:
            points = list(zip([s for s, _ in points], smooth([v for _, v in points], smoothing)))
        out[run_id] = points
    return out


def format_duration(seconds: float | None) -> str:
    """'1:02:03' / '4:05' / '—'."""
    if seconds is None:
        return "—"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def stage_line(stage: dict[str, Any], words: dict[str, str]) -> tuple[str, float | None]:
    """What a ``prepare`` event says in the page's language ('loading the model · demo', 'building … 40/150') and
    its fraction done (None when the stage has no count)."""
    name = str(stage.get("stage", ""))
    text = words.get(f"prep.{name}", name).format_map(_Blank(stage))
    detail = stage.get("model") or ", ".join(stage.get("datasets") or [])
    if detail and name in ("tokenizer", "data"):
        text += f" · {detail}"
    done, total = stage.get("done"), stage.get("total")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        return f"{text} · {done}/{total}", min(done / total, 1.0)
    return text, None


def progress_html(metrics: RunMetrics | None, state: str, words: dict[str, str]) -> str:
    """A progress bar with step, percentage, ETA, tokens/s and the run's state; before the first loss (and after
    the last one) the trainer's current stage, with its count or a moving bar."""
    last = metrics.last if metrics else {}
    step, total = last.get("step") or 0, last.get("total_steps") or 0
    fraction = min(step / total, 1.0) if total else (1.0 if state == "succeeded" else 0.0)
    eta = last.get("eta_s") if state == "running" else None
    if state == "running" and last.get("time") and eta is not None:
        eta = max(eta - (time.time() - last["time"]), 0)
    bits = [f"{words['step']} {step}/{total or '?'}", f"{fraction:.0%}"]
    stage = metrics.stage if metrics is not None and state in ("queued", "running", "stopping") else None
    busy = False
    if stage is not None:
        text, part = stage_line(stage, words)
        if not last:
            bits, fraction, busy = [f"{words['preparing']}: {text}"], part or 0.0, part is None
        else:
            bits.append(text)
    elif state == "running" and not last:
        bits, busy = [words["waiting"]], True
    if eta is not None:
        bits.append(f"{words['eta']} {format_duration(eta)}")
    if last.get("tokens_per_s"):
        bits.append(f"{last['tokens_per_s']:.0f} {words['tokens_per_s']}")
    if last.get("loss") is not None:
        bits.append(f"{words['loss']} {last['loss']:.4f}")
    label = html.escape(" · ".join(bits))
    state_text = html.escape(words.get(f"state.{state}", state))
    stage_name = html.escape(str(stage.get("stage", ""))) if stage else ""
    fill = "tl-fill tl-busy" if busy else "tl-fill"
    return (
        f'<div class="tl-progress" data-state="{html.escape(state)}" data-step="{step}" data-total="{total}" '
        f'data-stage="{stage_name}"><div class="tl-progress-head">'
        f'<span class="tl-state tl-state-{html.escape(state)}">{state_text}</span><span>{label}</span></div>'
        f'<div class="tl-bar"><div class="{fill}" style="width:{fraction * 100:.1f}%"></div></div></div>'
    )
