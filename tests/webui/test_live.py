"""Live-view tables and the progress bar."""

from __future__ import annotations

import re
from pathlib import Path

from tunelab.core.config import RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.rundir import create_run
from tunelab.services.history import RunHistory
from tunelab.webui import charts, live

NAMES = {"loss": "loss", "smoothed": "loss (smoothed)", "eval_loss": "eval loss"}
WORDS = {"step": "step", "eta": "ETA", "tokens_per_s": "tok/s", "loss": "loss", "preparing": "preparing",
         "waiting": "starting", "state.running": "running", "state.succeeded": "succeeded",
         "prep.demo": "building the demo model", "prep.steps": "first loss after {logging_steps} steps",
         "prep.save": "saving"}


def test_live_series_and_the_progress_bar(tmp_path: Path) -> None:
    run = create_run(RunConfig(output_dir=str(tmp_path / "r")))
    history = RunHistory(tmp_path)
    metrics = history.metrics(run)
    assert "starting" in live.progress_html(metrics, "running", WORDS) and "tl-busy" in live.progress_html(metrics, "running", WORDS)
    assert 'data-empty="1"' in charts.line_chart(live.loss_series(metrics, 0.6, NAMES), "Loss")  # says it is empty
    writer = EventWriter(run.events_file)
    # before the first loss the bar shows what the trainer is doing: a count where it has one, else a moving bar
    writer.write("prepare", stage="demo", done=40, total=150)
    html = live.progress_html(history.metrics(run), "running", WORDS)
    assert "preparing: building the demo model · 40/150" in html and "width:26.7%" in html and "tl-busy" not in html
    writer.write("prepare", stage="steps", logging_steps=2)
    html = live.progress_html(history.metrics(run), "running", WORDS)
    assert "preparing: first loss after 2 steps" in html and "tl-busy" in html and 'data-stage="steps"' in html
    for step, value in enumerate([4.0, 3.0, 3.5, 2.0], 1):
        writer.write("train", step=step, total_steps=8, loss=value, lr=1e-3, tokens_per_s=100.0, eta_s=40.0)
    writer.write("eval", step=4, eval_loss=2.5)
    metrics = RunHistory(tmp_path).metrics(run)
    series = live.loss_series(metrics, 0.6, NAMES)
    assert [v for _, v in series["loss"]] == [4.0, 3.0, 3.5, 2.0]
    smoothed = [v for _, v in series["loss (smoothed)"]]
    assert smoothed[0] == 4.0 and 2.0 < smoothed[-1] < 3.5
    assert series["eval loss"] == [(4, 2.5)]
    html = live.progress_html(metrics, "running", WORDS)
    assert 'data-step="4" data-total="8"' in html and "width:50.0%" in html and "step 4/8" in html and "ETA" in html
    assert "preparing" not in html and 'data-stage=""' in html  # training: the stage line is gone
    writer.write("prepare", stage="save")
    html = live.progress_html(history.metrics(run), "running", WORDS)
    assert "step 4/8" in html and "saving" in html  # after the last loss: the step count and what follows
    overlay = live.overlay_series({"a": metrics, "b": metrics}, 0.0)
    assert sorted(overlay) == ["a", "b"] and len(overlay["a"]) == 4


def test_every_series_is_drawn_with_a_stroke_and_named_in_the_legend() -> None:
    svg = charts.line_chart({"run-a": [(1, 2.0), (2, 1.5), (3, 1.0)], "run-b": [(1, 3.0)], "none": []}, "Loss", "loss")
    lines = re.findall(r'<polyline points="([^"]*)" fill="none" stroke="(#[0-9a-f]{6})"[^>]*data-series="([^"]*)" '
                       r'data-count="(\d+)"', svg)
    assert [(name, int(count), len(points.split())) for points, _, name, count in lines] == [("run-a", 3, 3), ("run-b", 1, 1)]
    assert len({color for _, color, _, _ in lines}) == 2  # one colour per run
    legend = svg[svg.index('class="tl-legend"'):]
    assert "run-a" in legend and "run-b" in legend and "none" not in legend
    ys = [float(p.split(",")[1]) for p in lines[0][0].split()]
    assert ys[0] < ys[1] < ys[2]  # falling loss is drawn going down (SVG y grows downwards)
    assert charts.nice_ticks(0.0013, 0.0047) == [0.001, 0.002, 0.003, 0.004, 0.005]
    assert charts.nice_ticks(1, 5) == [1, 2, 3, 4, 5]


def test_format_duration() -> None:
    assert live.format_duration(None) == "—"
    assert live.format_duration(65) == "1:05"
    assert live.format_duration(3723) == "1:02:03"
