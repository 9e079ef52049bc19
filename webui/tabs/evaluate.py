"""Eval tab: score a run's base model and fine-tuned model side by side (loss/perplexity, generation metrics,
lm-eval benchmark tasks) and show every metric with its delta and standard error.

Each evaluation is a job process (``python -m tunelab.engine.evaluate JOB_DIR``) in <run>/evals/<job-id>/;
this tab starts it, follows its status.json and reads results.json, never importing torch itself.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from typing import Any

from tunelab.core.config import ConfigError
from tunelab.core.eval_config import EvalConfig, validate_eval_config
from tunelab.core.serving import require_vllm
from tunelab.webui.jobs_view import finished_runs, follow_jobs, language_of, progress_line, refresh_choices
from tunelab.webui.options import SchemaOptions
from tunelab.webui.studio import Studio

TITLE_KEY = "tab.evaluate"
POLL_S = 0.5
COLUMNS = ("metric", "base", "tuned", "delta", "stderr", "n")
PREDICTION_COLUMNS = ("prompt", "reference", "base", "tuned")
CELL = "vertical-align:top;padding:4px 6px;border-top:1px solid var(--border-color-primary);white-space:pre-wrap;overflow-wrap:anywhere"
HEAD = "text-align:left;padding:4px 6px;white-space:nowrap;word-break:keep-all"
# EvalConfig fields shown as widgets (the run comes from the run picker): the main ones, then "More options".
MAIN = ["metrics", "dataset", "max_samples", "tasks", "limit", "engine"]
MORE = ["max_new_tokens", "batch_size", "num_fewshot", "chat_template", "compare_base", "cutoff_len", "dtype", "bootstrap", "seed"]


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


def _t(studio: Studio, key: str, lang: str) -> str:
    return studio.translations.text(key, lang)


def results_table(studio: Studio, results: dict[str, Any] | None, lang: str | None = None) -> Any:
    """A DataFrame: metric, base, fine-tuned, delta (arrow when it improves), its stderr, examples."""
    import pandas as pd

    lang = lang or studio.lang
    rows = []
    for m in (results or {}).get("metrics", []):
        better = None if m["delta"] is None else (m["delta"] > 0) == m["higher_is_better"] and m["delta"] != 0
        arrow = "" if better is None or m["delta"] == 0 else (" ▲" if better else " ▼")
        rows.append([
            m["name"], _num(m["base"]), _num(m["tuned"]), _num(m["delta"], True) + arrow,
            "± " + _num(m["delta_stderr"] if m["delta_stderr"] is not None else m["tuned_stderr"]), m.get("n") or "",
        ])
    return pd.DataFrame(rows, columns=[_t(studio, f"eval.col.{c}", lang) for c in COLUMNS])


def results_notes(studio: Studio, results: dict[str, Any] | None, lang: str | None = None) -> str:
    """Where the numbers come from: data, notes and how standard errors were computed."""
    if not results:
        return ""
    lang = lang or studio.lang
    methods = sorted({m["stderr_method"] for m in results.get("metrics", [])})
    lines = [f"- {n}" for n in results.get("notes", [])] + [f"- {_t(studio, 'eval.stderr', lang)}: {m}" for m in methods]
    if results.get("predictions"):
        lines.append(f"- {_t(studio, 'eval.predictions', lang)}: `{results['predictions']}`")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return f'<td style="{CELL}">{html.escape(text)}</td>'


def _chat_cell(prediction: dict[str, Any]) -> str:
    """The prompt as the conversation it is (role, then text), or its text when the job kept no messages."""
    messages = prediction.get("messages")
    if not messages:
        prompt = prediction["prompt"]
        return _cell(prompt if len(prompt) <= 300 else "…" + prompt[-300:])
    turns = "".join(
        f'<div class="tl-turn" data-role="{html.escape(m["role"])}"><b>{html.escape(m["role"])}</b> '
        f'{html.escape(str(m.get("content") or ""))}</div>' for m in messages
    )
    return f'<td style="{CELL}">{turns}</td>'


def predictions_html(studio: Studio, job: Any = None, lang: str | None = None, limit: int = 50) -> str:
    """The first predictions side by side as plain chat: the prompt's conversation, the reference, base and
    fine-tuned replies (fixed column widths, so every column stays on screen; headers never break a word)."""
    import json

    lang = lang or studio.lang
    head = "".join(f'<th style="{HEAD}">{html.escape(_t(studio, f"eval.pcol.{c}", lang))}</th>' for c in PREDICTION_COLUMNS)
    rows = []
    if job is not None and job.predictions_file.is_file():
        with job.predictions_file.open(encoding="utf-8") as handle:
            for line, _ in zip(handle, range(limit)):
                p = json.loads(line)
                rows.append("<tr>" + _chat_cell(p) + "".join(_cell(str(p.get(k, ""))) for k in ("reference", "base", "tuned")) + "</tr>")
    widths = "".join(f'<col style="width:{w}">' for w in ("31%", "23%", "23%", "23%"))
    return (f'<table class="tl-predictions" data-rows="{len(rows)}" style="width:100%;table-layout:fixed;border-collapse:collapse">'
            f"<colgroup>{widths}</colgroup><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def latest_results(studio: Studio, run: str | None, lang: str | None = None) -> tuple[str, Any, str]:
    """The newest succeeded evaluation of ``run`` (status line, metrics table, predictions)."""
    from tunelab.services.model_jobs import jobs_of

    lang = lang or studio.lang
    if run:
        for job in jobs_of("eval", run):
            if job.status().get("state") == "succeeded" and job.results():
                results = job.results()
                head = f"**{_t(studio, 'eval.latest', lang)}** `{job.run_id}`\n\n"
                return (head + results_notes(studio, results, lang), results_table(studio, results, lang),
                        predictions_html(studio, job, lang))
    return _t(studio, "eval.none_yet", lang), results_table(studio, None, lang), predictions_html(studio, None, lang)


def outcome(studio: Studio, job: Any, status: dict[str, Any], lang: str) -> tuple[str, Any, str]:
    """What a finished evaluation shows: its results, or its error and log."""
    results = job.results()
    if status.get("state") == "succeeded" and results:
        return (f"✅ {_t(studio, 'eval.done', lang)} `{job.run_id}`\n\n" + results_notes(studio, results, lang),
                results_table(studio, results, lang), predictions_html(studio, job, lang))
    return (f"❌ {status.get('state')}: {status.get('error') or status.get('message', '')}\n\n`{job.log_file}`",
            results_table(studio, None, lang), predictions_html(studio, None, lang))


def start_eval(studio: Studio, lang: str, run: str | None, *values: Any) -> Iterator[tuple[str, Any, str]]:
    """Start the evaluation job (``values``: the option widgets, MAIN + MORE in order); yield (status, metrics table,
    predictions) in ``lang`` until it ends."""
    from tunelab.core.sources import SourceError, from_run
    from tunelab.services.model_jobs import is_final, job_state, start_job

    empty = results_table(studio, None, lang), predictions_html(studio, None, lang)
    if not run:
        yield f"**{_t(studio, 'eval.pick_run', lang)}**", *empty
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
        yield progress_line(studio, lang, "eval", job, status), *empty
        time.sleep(POLL_S)
    yield outcome(studio, job, status, lang)


def options() -> SchemaOptions:
    """The Evaluate tab's option widgets, from EvalConfig."""
    return SchemaOptions(EvalConfig, MAIN + MORE, "eval")


def build(studio: Studio) -> None:
    """Lay out the Eval tab."""
    import gradio as gr

    t = studio.t
    runs = finished_runs(studio.runs_dir)
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
        predictions = studio.register(gr.HTML(predictions_html(studio), elem_id="eval_predictions"))
    language = language_of(studio)

    def refresh_runs(current: str | None) -> Any:
        return refresh_choices(studio.runs_dir, current)

    refresh.click(refresh_runs, run, run, api_name="eval_refresh")
    run.focus(refresh_runs, run, run, api_name=False, show_progress="hidden")  # runs finished since the page loaded
    shown = [status, table, predictions]
    run.change(lambda r, lang: latest_results(studio, r, lang), [run, language], shown, api_name="eval_latest")
    if "language" in studio.components:  # the page's language changed: the same results, in its words
        language.change(lambda r, lang: latest_results(studio, r, lang), [run, language], shown, show_progress="hidden",
                        api_visibility="private")
    button.click(
        lambda *args: (yield from start_eval(studio, *args)), [language, run, *fields.inputs()], shown, api_name="evaluate",
    )
    follow_jobs(studio, "eval", run, shown, outcome)
