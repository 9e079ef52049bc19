"""Eval tab: score a run's base model and fine-tuned model side by side (loss/perplexity, generation metrics,
lm-eval benchmark tasks) and show every metric with its delta and standard error.

Each evaluation is a job process (``python -m tunelab.engine.evaluate JOB_DIR``) in <run>/evals/<job-id>/;
this tab starts it, follows its status.json and reads results.json, never importing torch itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from tunelab.core.config import ConfigError
from tunelab.core.eval_config import EvalConfig, validate_eval_config
from tunelab.core.rundir import list_runs
from tunelab.core.serving import require_vllm
from tunelab.webui.options import SchemaOptions
from tunelab.webui.studio import Studio

TITLE_KEY = "tab.evaluate"
POLL_S = 0.5
COLUMNS = ("metric", "base", "tuned", "delta", "stderr", "n")
# EvalConfig fields shown as widgets (the run comes from the run picker): the main ones, then "More options".
MAIN = ["metrics", "dataset", "max_samples", "tasks", "limit", "engine"]
MORE = ["max_new_tokens", "batch_size", "num_fewshot", "chat_template", "compare_base", "cutoff_len", "dtype", "bootstrap", "seed"]


def finished_runs(studio: Studio) -> list[tuple[str, str]]:
    """(label, path) of runs with saved weights, newest first."""
    return [
        (f"{run.run_id} ({run.status().get('state', '?')})", str(run.path))
        for run in list_runs(studio.runs_dir) if run.final_weights() is not None
    ]


def dataset_names() -> list[str]:
    """Registered dataset names (the choices besides the run's validation split)."""
    from tunelab.core.datasets import load_dataset_registry

    try:
        return sorted(load_dataset_registry().specs)
    except ValueError:
        return []


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def results_table(studio: Studio, results: dict[str, Any] | None) -> Any:
    """A DataFrame: metric, base, fine-tuned, delta (arrow when it improves), its stderr, examples."""
    import pandas as pd

    rows = []
    for m in (results or {}).get("metrics", []):
        better = None if m["delta"] is None else (m["delta"] > 0) == m["higher_is_better"] and m["delta"] != 0
        arrow = "" if better is None or m["delta"] == 0 else (" ▲" if better else " ▼")
        rows.append([
            m["name"], _num(m["base"]), _num(m["tuned"]), _num(m["delta"], True) + arrow,
            "± " + _num(m["delta_stderr"] if m["delta_stderr"] is not None else m["tuned_stderr"]), m.get("n") or "",
        ])
    return pd.DataFrame(rows, columns=[studio.t(f"eval.col.{c}") for c in COLUMNS])


def results_notes(studio: Studio, results: dict[str, Any] | None) -> str:
    """Where the numbers come from: data, notes and how standard errors were computed."""
    if not results:
        return ""
    methods = sorted({m["stderr_method"] for m in results.get("metrics", [])})
    lines = [f"- {n}" for n in results.get("notes", [])] + [f"- {studio.t('eval.stderr')}: {m}" for m in methods]
    if results.get("predictions"):
        lines.append(f"- {studio.t('eval.predictions')}: `{results['predictions']}`")
    return "\n".join(lines)


def predictions_table(studio: Studio, job: Any = None, limit: int = 50) -> Any:
    """The first predictions side by side: the prompt's end, the reference, base and fine-tuned replies."""
    import json

    import pandas as pd

    rows = []
    if job is not None and job.predictions_file.is_file():
        with job.predictions_file.open(encoding="utf-8") as handle:
            for line, _ in zip(handle, range(limit)):
                p = json.loads(line)
                prompt = p["prompt"] if len(p["prompt"]) <= 160 else "…" + p["prompt"][-160:]
                rows.append([prompt, p["reference"], p.get("base", ""), p.get("tuned", "")])
    return pd.DataFrame(rows, columns=[studio.t(f"eval.pcol.{c}") for c in ("prompt", "reference", "base", "tuned")])


def latest_results(studio: Studio, run: str | None) -> tuple[str, Any, Any]:
    """The newest succeeded evaluation of ``run`` (status line, metrics table, predictions)."""
    from tunelab.services.model_jobs import jobs_of

    if run:
        for job in jobs_of("eval", run):
            if job.status().get("state") == "succeeded" and job.results():
                results = job.results()
                head = f"**{studio.t('eval.latest')}** `{job.run_id}`\n\n"
                return head + results_notes(studio, results), results_table(studio, results), predictions_table(studio, job)
    return studio.t("eval.none_yet"), results_table(studio, None), predictions_table(studio)


def start_eval(studio: Studio, run: str | None, *values: Any) -> Iterator[tuple[str, Any, Any]]:
    """Start the evaluation job (``values``: the option widgets, MAIN + MORE in order); yield (status, metrics table,
    predictions) until it ends."""
    from tunelab.core.sources import SourceError, from_run
    from tunelab.services.model_jobs import is_final, job_state, start_job

    t = studio.t
    empty = results_table(studio, None), predictions_table(studio)
    if not run:
        yield f"**{t('eval.pick_run')}**", *empty
        return
    try:
        config = validate_eval_config({"run": run, **options().mapping(list(values))}, "eval")
        if config.engine == "vllm":
            require_vllm("engine 'vllm'")
        from_run(run)
    except (ConfigError, SourceError) as exc:
        yield f"❌ {exc}", *empty
        return
    job, _ = start_job("eval", config.model_dump(mode="json", exclude_none=True), studio.runs_dir)
    while True:
        status = job_state(job)
        if is_final(status):
            break
        yield f"⏳ {status.get('message') or t('eval.running')} (`{job.run_id}`)", *empty
        time.sleep(POLL_S)
    results = job.results()
    if status.get("state") == "succeeded" and results:
        yield (f"✅ {t('eval.done')} `{job.run_id}`\n\n" + results_notes(studio, results), results_table(studio, results),
               predictions_table(studio, job))
    else:
        yield f"❌ {status.get('state')}: {status.get('error') or status.get('message', '')}\n\n`{job.log_file}`", *empty


def options() -> SchemaOptions:
    """The Evaluate tab's option widgets, from EvalConfig."""
    return SchemaOptions(EvalConfig, MAIN + MORE, "eval")


def build(studio: Studio) -> None:
    """Lay out the Eval tab."""
    import gradio as gr

    t = studio.t
    runs = finished_runs(studio)
    first = runs[0][1] if runs else None
    with gr.Row():
        run = studio.register(gr.Dropdown(
            choices=runs, value=first, label=t("eval.run"), elem_id="eval_run", allow_custom_value=True, scale=4,
        ))
        refresh = studio.register(gr.Button(t("eval.refresh"), elem_id="eval_refresh", scale=0, min_width=100))
    fields = options()
    with gr.Row():
        fields.build(studio, MAIN[:3], {"dataset": dataset_names()}, checkboxes=("metrics",))
    with gr.Row():
        fields.build(studio, MAIN[3:])
    with gr.Accordion(t("eval.more"), open=False), gr.Row():
        fields.build(studio, MORE)
    button = studio.register(gr.Button(t("eval.button"), variant="primary", elem_id="eval_button"))
    status = studio.register(gr.Markdown(elem_id="eval_status"))
    table = studio.register(gr.Dataframe(
        value=results_table(studio, None), label=t("eval.results"), elem_id="eval_results", interactive=False, wrap=True,
    ))
    with gr.Accordion(t("eval.predictions_title"), open=False):
        predictions = studio.register(gr.Dataframe(
            value=predictions_table(studio), label=t("eval.predictions"), elem_id="eval_predictions", interactive=False,
            wrap=True,
        ))

    def refresh_runs(current: str | None) -> Any:
        choices = finished_runs(studio)
        return gr.update(choices=choices, value=current or (choices[0][1] if choices else None))

    refresh.click(refresh_runs, run, run, api_name="eval_refresh")
    run.focus(refresh_runs, run, run, api_name=False, show_progress="hidden")  # runs finished since the page loaded
    run.change(lambda r: latest_results(studio, r), run, [status, table, predictions], api_name="eval_latest")
    button.click(
        lambda *args: (yield from start_eval(studio, *args)), [run, *fields.inputs()], [status, table, predictions],
        api_name="evaluate",
    )
