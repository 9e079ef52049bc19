"""Export tab: pick a finished run, press one button, get a merged, verified model folder (and optionally GGUF).

The export runs as its own process (``python -m tunelab.engine.export JOB_DIR``); this tab only starts it
and follows its status.json, so the UI process never imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from tunelab.core.config import ConfigError
from tunelab.core.export_config import GGUF_TYPES, ExportConfig, validate_export_config
from tunelab.core.serving import require_vllm
from tunelab.webui.jobs_view import finished_runs, follow_jobs, language_of, progress_line, refresh_choices
from tunelab.webui.options import SchemaOptions
from tunelab.webui.preview import template_names
from tunelab.webui.studio import Studio

TITLE_KEY = "tab.export"
POLL_S = 0.5
# ExportConfig fields shown as widgets (the run comes from the run picker).
FIELDS = ["out", "dtype", "gguf", "shard_size", "template", "reload_unquantized", "verify", "serve_check", "overwrite"]


def _words(studio: Studio, lang: str | None) -> Any:
    return lambda key: studio.translations.text(key, lang or studio.lang)


def report_markdown(studio: Studio, report: dict[str, Any], lang: str | None = None) -> str:
    """The export report as Markdown: where, what files, and the verification."""
    t = _words(studio, lang)
    lines = [f"### {t('export.done')}", f"`{report['out']}`", ""]
    verify = report.get("verify")
    if verify:
        mark = "✅" if verify["passed"] else "❌"
        lines.append(f"{mark} **{t('export.verified') if verify['passed'] else t('export.verify_failed')}**: {verify['summary']}")
        lines.append(f"- {t('export.sample')}: {verify.get('generated', '')!r}")
    lines.append(f"- {t('export.template')}: `{report['template']}` ({report.get('template_reason', '')})")
    lines.append(f"- dtype: `{report['dtype']}`, {t('export.files')}: " + ", ".join(f"`{f}`" for f in report.get("files", {}).values()))
    gguf = report.get("gguf")
    if gguf:
        lines.append(
            f"- GGUF `{gguf['file']}` ({gguf['bytes'] / 2**20:.1f} MiB, {gguf['tensors']} {t('export.tensors')}, "
            f"{t('export.readback')} {gguf['max_rel_err']:.2g})"
        )
    served = report.get("serve_check")
    if served:
        mark = "✅" if served["passed"] else "❌"
        lines += ["", f"{mark} **{t('export.served') if served['passed'] else t('export.serve_failed')}**: {served['summary']}"]
        if served.get("answer"):
            lines.append(f"> **{served['prompt'][-1]['content']}**  \n> {served['answer']}")
    return "\n".join(lines)


def outcome(studio: Studio, job: Any, status: dict[str, Any], lang: str) -> str:
    """What a finished export shows: its report, or its error and log."""
    if status.get("state") == "succeeded" and job.results():
        return report_markdown(studio, job.results() or {}, lang)
    return f"❌ {status.get('state')}: {status.get('error') or status.get('message', '')}\n\n`{job.log_file}`"


def start_export(studio: Studio, lang: str, run: str | None, *values: Any) -> Iterator[str]:
    """Start the export job (``values``: the option widgets, FIELDS in order) and yield its status as Markdown, in
    ``lang``, until it ends."""
    from tunelab.core.sources import SourceError, from_run
    from tunelab.services.model_jobs import is_final, job_state, start_job

    t = _words(studio, lang)
    if not run:
        yield f"**{t('export.pick_run')}**"
        return
    try:
        config = validate_export_config({"run": run, **options().mapping(list(values))})
        if config.serve_check:
            require_vllm("serve_check")
        source = from_run(run)
    except (ConfigError, SourceError) as exc:
        yield f"❌ {exc}"
        return
    if source.quantization != "none" and source.adapter is not None and not config.reload_unquantized:
        yield f"❌ {t('export.quantized').format(quantization=source.quantization)}"
        return
    job, _ = start_job("export", config.model_dump(mode="json", exclude_none=True), studio.runs_dir)
    status: dict[str, Any] = {}
    while True:
        status = job_state(job)
        if is_final(status):
            break
        yield progress_line(studio, lang, "export", job, status)
        time.sleep(POLL_S)
    yield outcome(studio, job, status, lang)


def options() -> SchemaOptions:
    """The Export tab's option widgets, from ExportConfig."""
    return SchemaOptions(ExportConfig, FIELDS, "export")


def build(studio: Studio) -> None:
    """Lay out the Export tab."""
    import gradio as gr

    t = studio.t
    runs = finished_runs(studio.runs_dir)
    with gr.Row():
        run = studio.register(gr.Dropdown(
            choices=runs, value=runs[0][1] if runs else None, label=t("export.run"), elem_id="export_run",
            allow_custom_value=True, scale=4,
        ))
        refresh = studio.register(gr.Button(t("export.refresh"), elem_id="export_refresh", scale=0, min_width=100))
    fields = options()
    fields.build(studio, ["out"])
    with gr.Row():
        fields.build(studio, FIELDS[1:5], {"gguf": [("—", ""), *[(g, g) for g in GGUF_TYPES]], "template": template_names()})
    with gr.Row():
        fields.build(studio, FIELDS[5:])
    button = studio.register(gr.Button(t("export.button"), variant="primary", elem_id="export_button"))
    status = studio.register(gr.Markdown(elem_id="export_status"))

    def refresh_runs(current: str | None) -> Any:
        return refresh_choices(studio.runs_dir, current)

    refresh.click(refresh_runs, run, run, api_name="export_refresh")
    run.focus(refresh_runs, run, run, api_name=False, show_progress="hidden")  # runs finished since the page loaded
    button.click(
        lambda *args: (yield from start_export(studio, *args)), [language_of(studio), run, *fields.inputs()], status,
        api_name="export",
    )
    follow_jobs(studio, "export", run, [status], outcome)
