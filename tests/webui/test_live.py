"""Live-view tables and the progress bar."""

from __future__ import annotations

from pathlib import Path

from tunelab.core.config import RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.rundir import create_run
from tunelab.services.history import RunHistory
from tunelab.webui import live

NAMES = {"loss": "loss", "smoothed": "loss (smoothed)", "eval_loss": "eval loss"}
WORDS = {"step": "step", "eta": "ETA", "tokens_per_s": "tok/s", "loss": "loss", "preparing": "preparing",
         "state.running": "running", "state.succeeded": "succeeded"}


def test_plots_keep_numeric_axes_before_the_first_point(tmp_path: Path) -> None:
    import gradio as gr

    run = create_run(RunConfig(output_dir=str(tmp_path / "r")))
    metrics = RunHistory(tmp_path).metrics(run)
    # an empty table must still say "numbers": the plot keeps the axis type it first saw
    assert gr.LinePlot(x="step", y="lr").postprocess(live.series_frame(metrics, "lr")).datatypes == {
        "step": "quantitative", "lr": "quantitative"}
    loss = gr.LinePlot(x="step", y="value", color="series").postprocess(live.loss_frame(metrics, 0.6, NAMES))
    assert loss.datatypes == {"step": "quantitative", "value": "quantitative", "series": "nominal"}
    assert "preparing" in live.progress_html(metrics, "running", WORDS)
    writer = EventWriter(run.events_file)
    for step, value in enumerate([4.0, 3.0, 3.5, 2.0], 1):
        writer.write("train", step=step, total_steps=8, loss=value, lr=1e-3, tokens_per_s=100.0, eta_s=40.0)
    writer.write("eval", step=4, eval_loss=2.5)
    metrics = RunHistory(tmp_path).metrics(run)
    frame = live.loss_frame(metrics, 0.6, NAMES)
    assert list(frame[frame.series == "loss"].value) == [4.0, 3.0, 3.5, 2.0]
    smoothed = list(frame[frame.series == "loss (smoothed)"].value)
    assert smoothed[0] == 4.0 and 2.0 < smoothed[-1] < 3.5
    assert list(frame[frame.series == "eval loss"].step) == [4]
    html = live.progress_html(metrics, "running", WORDS)
    assert 'data-step="4" data-total="8"' in html and "width:50.0%" in html and "step 4/8" in html and "ETA" in html
    overlay = live.overlay_frame({"a": metrics, "b": metrics}, 0.0)
    assert sorted(set(overlay.run)) == ["a", "b"] and len(overlay) == 8


def test_format_duration() -> None:
    assert live.format_duration(None) == "—"
    assert live.format_duration(65) == "1:05"
    assert live.format_duration(3723) == "1:02:03"
