"""Train tab: the schema-generated run form, data preview, YAML/command preview, Start/Stop and the live view."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, RunConfig
from tunelab.core.datasets import DataError, load_dataset_registry
from tunelab.core.rundir import FINAL_STATES, RunDir, create_run
from tunelab.core.templates import UnknownTemplate, registry
from tunelab.webui import form, live, preview
from tunelab.webui.studio import Studio

TITLE_KEY = "tab.train"
PREVIEW_FIELDS = ("model", "template", "stage", "dataset", "dataset_dir", "train_on_prompt", "mask_history", "system_prompt")
TICK_S = 0.5
SCROLL_LOG_JS = "() => { const box = document.querySelector('#log textarea'); if (box) box.scrollTop = box.scrollHeight; }"


def _text(studio: Studio, key: str, lang: str) -> str:
    return studio.translations.text(key, lang)


def _label(studio: Studio, name: str) -> str:
    key = f"field.{name}"
    return studio.t(key) if key in studio.translations.table else name


def model_choices() -> list[str]:
    """'demo' first, then every model id of the template catalog."""
    return ["demo", *sorted({hit.entry.id for hit in registry().catalog.values()}, key=str.lower)]


def template_choices(model: str) -> tuple[list[tuple[str, str]], str]:
    """Template dropdown choices ('auto' labelled with what it resolves to) and the reason."""
    try:
        choice = preview.resolve_template("auto", model or "demo")
        auto, reason = f"auto → {choice.name}", choice.reason
    except Exception as exc:  # a broken model folder must not break the form
        auto, reason = "auto", str(exc)
    return [(auto, "auto"), *[(name, name) for name in registry().names()]], reason


def dataset_choices() -> list[tuple[str, str]]:
    """(label, name) per registered dataset."""
    try:
        specs = load_dataset_registry().specs
    except DataError:
        return []
    return [(f"{name} ({spec.format}{', hub' if spec.hub else ''})", name) for name, spec in specs.items()]


def _field_choices(spec: form.FieldSpec) -> list[Any] | None:
    if spec.name == "model":
        return model_choices()
    if spec.name == "template":
        return template_choices(spec.default)[0]
    if spec.name == "dataset":
        return dataset_choices()
    return None


def build(studio: Studio) -> None:
    """Lay out the form, the run controls and the live view; wire their events."""
    import gradio as gr

    specs = form.field_specs()
    fields: dict[str, Any] = {}
    initial = studio.services.get("initial_config") or RunConfig()  # `tunelab webui --config FILE` prefills

    def field(spec: form.FieldSpec, **kwargs: Any) -> Any:
        value = getattr(initial, spec.name)
        component = form.make_component(spec, _label(studio, spec.name), _field_choices(spec), value, **kwargs)
        fields[spec.name] = studio.register(component)
        return component

    with gr.Row():
        with gr.Column(scale=3):
            for group in form.GROUPS:
                main = [s for s in specs if s.group == group and s.main]
                if not main:
                    continue
                with gr.Row():
                    for spec in main:
                        field(spec, scale=2 if spec.name in ("model", "dataset") else 1)
                        if spec.name == "model":
                            model_path = studio.register(gr.Textbox(
                                label=studio.t("train.model_path"), info=studio.t("train.model_path_hint"),
                                elem_id="model_path", scale=2,
                            ))
            template_info = studio.register(gr.Markdown(elem_id="template_info"))
            with gr.Accordion(studio.t("train.advanced"), open=False, elem_id="advanced"):
                with gr.Tabs():
                    for group in form.GROUPS:
                        rest = [s for s in specs if s.group == group and not s.main]
                        if rest:
                            with gr.Tab(studio.t(f"group.{group}")):
                                for start in range(0, len(rest), 3):
                                    with gr.Row():
                                        for spec in rest[start:start + 3]:
                                            field(spec)
            with gr.Accordion(studio.t("train.preview"), open=True):
                data_preview = studio.register(gr.HighlightedText(
                    label=studio.t("train.preview_label"), elem_id="data_preview", show_legend=True,
                    combine_adjacent=False, color_map={studio.t("train.trained"): "green"},
                ))
                preview_note = studio.register(gr.Markdown(elem_id="preview_note"))
            with gr.Accordion(studio.t("train.config"), open=False):
                with gr.Row():
                    yaml_box = studio.register(gr.Code(label=studio.t("train.yaml"), language="yaml", elem_id="config_yaml", interactive=False))
                    command_box = studio.register(gr.Code(label=studio.t("train.command"), language="shell", elem_id="config_command", interactive=False))
                with gr.Row():
                    save = studio.register(gr.DownloadButton(studio.t("train.save"), elem_id="save_config"))
                    load = studio.register(gr.UploadButton(studio.t("train.load"), file_types=[".yaml", ".yml"], elem_id="load_config"))
        with gr.Column(scale=2):
            gpus = studio.services["jobs"].gpus
            gpu_pick = studio.register(gr.CheckboxGroup(
                choices=[(g.label, g.index) for g in gpus], label=studio.t("train.gpus"), elem_id="gpus", visible=bool(gpus),
            ))
            if not gpus:
                gr.Markdown(studio.t("train.gpus_none"))
            with gr.Row():
                start = studio.register(gr.Button(studio.t("train.start"), variant="primary", elem_id="start"))
                stop = studio.register(gr.Button(studio.t("train.stop"), variant="stop", elem_id="stop"))
            form_error = studio.register(gr.Markdown(elem_id="form_error"))
            status = studio.register(gr.Markdown(elem_id="status"))  # filled by the live view, in the page's language
            progress = studio.register(gr.HTML(elem_id="progress"))
            log_box = studio.register(gr.Textbox(label=studio.t("train.log"), lines=14, max_lines=14, elem_id="log", interactive=False, autoscroll=True))
    with gr.Row():
        smoothing = studio.register(gr.Slider(0.0, 0.95, value=0.6, step=0.05, label=studio.t("train.smoothing"), elem_id="smoothing", scale=1))
    with gr.Row():
        loss_plot = studio.register(gr.LinePlot(
            x="step", y="value", color="series", label=studio.t("train.loss_plot"), elem_id="loss_plot", scale=2,  # no fixed height: it would clip the legend
            y_title=studio.t("train.loss_plot"), color_title=" ",
            color_map={**{_text(studio, f"series.{k}", lang): c for lang in ("en", "zh")
                          for k, c in (("loss", "#a9c7ee"), ("smoothed", "#1f5fbf"), ("eval_loss", "#e4572e"))}},
        ))
        with gr.Column(scale=1):
            lr_plot = studio.register(gr.LinePlot(x="step", y="lr", label=studio.t("train.lr_plot"), elem_id="lr_plot", height=150))
            speed_plot = studio.register(gr.LinePlot(x="step", y="tokens_per_s", label=studio.t("train.speed_plot"), elem_id="speed_plot", height=150))
    live_state = gr.State({"run": None, "key": None})
    studio.components["train_live"] = live_state
    timer = gr.Timer(TICK_S)

    ordered = [fields[s.name] for s in specs]
    language = studio.components["language"]
    form_inputs = [language, model_path, *ordered]

    def mapping_of(values: list[Any]) -> dict[str, Any]:
        path, rest = values[0], values[1:]
        mapping = form.form_to_mapping(specs, rest)
        if isinstance(path, str) and path.strip():
            mapping["model"] = path.strip()
        return mapping

    def on_form(lang: str, *values: Any) -> tuple:
        config, error = form.validate(mapping_of(list(values)))
        if config is None:
            return "", "", f"**{_text(studio, 'train.invalid', lang)}:** {error}", None
        text = form.yaml_preview(config)
        return text, form.command_preview(config), "", _config_file(text)

    def on_preview(lang: str, *values: Any) -> tuple:
        mapping = mapping_of(list(values))
        choices, reason = template_choices(mapping.get("model") or "demo")
        result = preview.render_examples(
            model=mapping.get("model") or "demo", template=mapping.get("template") or "auto", stage=mapping.get("stage") or "sft",
            datasets=mapping.get("dataset") or [], dataset_dir=mapping.get("dataset_dir"),
            train_on_prompt=bool(mapping.get("train_on_prompt")), mask_history=bool(mapping.get("mask_history")),
            system_prompt=mapping.get("system_prompt"), label=_text(studio, "train.trained", lang),
        )
        info = f"{_text(studio, 'train.auto_is', lang)} **{choices[0][0].removeprefix('auto → ')}** — {reason}"
        label = _text(studio, "train.trained", lang)
        return gr.update(choices=choices), info, gr.update(value=result.segments, color_map={label: "green"}), result.note

    def on_start(lang: str, devices: list[str], *values: Any) -> tuple:
        config, error = form.validate(mapping_of(list(values)))
        if config is None:
            return f"**{_text(studio, 'train.invalid', lang)}:** {error}", gr.skip(), gr.skip()
        from tunelab.cli.train import preflight

        try:
            preflight(config)
        except (ConfigError, DataError, UnknownTemplate) as exc:
            return f"**{_text(studio, 'train.invalid', lang)}:** {exc}", gr.skip(), gr.skip()
        run = create_run(config, studio.runs_dir)
        jobs = studio.services["jobs"]
        try:
            jobs.submit(run, devices=list(devices or []))
        except ValueError as exc:
            return f"**{_text(studio, 'train.invalid', lang)}:** {exc}", gr.skip(), gr.skip()
        jobs.poll()
        return "", {"run": str(run.path), "key": None}, f"{_text(studio, 'train.started', lang)}: `{run.run_id}`"

    def on_stop(lang: str, state: dict) -> tuple:
        if not state.get("run"):
            return _text(studio, "train.nothing_to_stop", lang), gr.skip()
        outcome = studio.services["jobs"].stop(state["run"])
        message = {"stopping": "train.stopping", "dequeued": "train.dequeued"}.get(outcome, "train.nothing_to_stop")
        # the next tick redraws the status even if the run already ended before this answer arrives
        return _text(studio, message, lang), {**state, "key": None}

    def on_tick(state: dict, weight: float, lang: str) -> tuple:
        return watch(studio, state, weight, lang)

    def on_load_file(lang: str, file: Any) -> list[Any]:
        path = Path(file if isinstance(file, str) else file.name)
        try:
            config = form.load_yaml_config(path.read_text(encoding="utf-8"), path.name)
        except (ConfigError, OSError) as exc:
            return [f"**{_text(studio, 'train.invalid', lang)}:** {exc}", gr.skip()] + [gr.skip()] * len(ordered)
        return [f"{_text(studio, 'train.loaded', lang)}: `{path.name}`", ""] + form.config_to_values(specs, config)

    quiet = dict(show_progress="hidden", api_visibility="private")
    outputs_form = [yaml_box, command_box, form_error, save]
    preview_outputs = [fields["template"], template_info, data_preview, preview_note]
    for component in ordered:
        component.change(on_form, inputs=form_inputs, outputs=outputs_form, **quiet)
    model_path.change(on_form, inputs=form_inputs, outputs=outputs_form, show_progress="hidden", api_name="check_form")
    for name in PREVIEW_FIELDS:
        fields[name].change(on_preview, inputs=form_inputs, outputs=preview_outputs, **quiet)
    model_path.change(on_preview, inputs=form_inputs, outputs=preview_outputs, show_progress="hidden", api_name="preview")
    language.change(on_form, inputs=form_inputs, outputs=outputs_form, **quiet)
    language.change(on_preview, inputs=form_inputs, outputs=preview_outputs, **quiet)
    start.click(on_start, inputs=[language, gpu_pick, model_path, *ordered], outputs=[form_error, live_state, status], api_name="start")
    stop.click(on_stop, inputs=[language, live_state], outputs=[status, live_state], api_name="stop")
    load.upload(on_load_file, inputs=[language, load], outputs=[form_error, model_path, *ordered], api_name="load_config")
    live_outputs = [live_state, status, progress, loss_plot, lr_plot, speed_plot, log_box]
    live_inputs = [live_state, smoothing, language]
    timer.tick(on_tick, inputs=live_inputs, outputs=live_outputs, show_progress="hidden", api_name="watch")
    log_box.change(None, js=SCROLL_LOG_JS, **quiet)  # keep the newest log lines in view
    smoothing.change(on_tick, inputs=live_inputs, outputs=live_outputs, **quiet)
    language.change(on_tick, inputs=live_inputs, outputs=live_outputs, **quiet)

    def on_page_load(lang: str, *values: Any) -> tuple:
        return (*on_form(lang, *values), *on_preview(lang, *values), {"run": reattach(studio), "key": None})

    root_blocks().load(
        on_page_load, inputs=form_inputs, **quiet,
        outputs=[*outputs_form, fields["template"], template_info, data_preview, preview_note, live_state],
    )


def root_blocks() -> Any:
    """The Blocks being built (tabs are built inside its context)."""
    from gradio.context import Context

    return Context.root_block


def reattach(studio: Studio) -> str | None:
    """The run a freshly opened page should watch: the newest queued/running job, else the newest run."""
    jobs = studio.services["jobs"]
    active = jobs.jobs(("running", "queued"))
    if active:
        return active[-1].run_dir
    runs = studio.services["history"].runs()
    return str(runs[0].path) if runs else None


def _words(studio: Studio, lang: str) -> dict[str, str]:
    keys = ("step", "eta", "tokens_per_s", "loss", "preparing")
    words = {k: _text(studio, f"live.{k}", lang) for k in keys}
    for state in ("queued", "running", "stopping", "succeeded", "failed", "aborted", "unknown"):
        words[f"state.{state}"] = _text(studio, f"state.{state}", lang)
    return words


def watch(studio: Studio, state: dict, weight: float, lang: str) -> tuple:
    """One live-view update for the run in ``state`` (all gr.skip() when nothing changed)."""
    import gradio as gr

    skip = (gr.skip(),) * 7
    if not state or not state.get("run"):
        if state is not None and state.get("key") != ("none", lang):
            return ({**state, "key": ("none", lang)}, _text(studio, "train.no_run", lang), "", *skip[3:])
        return skip
    run = RunDir(state["run"])
    metrics = studio.services["history"].metrics(run)
    status = run.status()
    run_state = status.get("state", "unknown")
    if run_state not in FINAL_STATES and studio.services["jobs"].stopping(run.path):
        run_state = "stopping"
    key = (str(run.path), metrics.version, metrics.log.offset, run_state, weight, lang)
    if key == state.get("key"):
        return skip
    state = {**state, "key": key}
    words = _words(studio, lang)
    names = {k: _text(studio, f"series.{k}", lang) for k in ("loss", "smoothed", "eval_loss")}
    message = status.get("error") or status.get("message") or ""
    devices = status.get("devices")
    where = f" · GPU {','.join(devices)}" if devices else ""
    headline = f"**{_text(studio, 'train.watching', lang)}** `{run.run_id}` — **{words.get(f'state.{run_state}', run_state)}**{where}"
    if message:
        headline += f"\n\n{message}"
    return (
        state, headline, live.progress_html(metrics, run_state, words),
        live.loss_frame(metrics, weight, names), live.series_frame(metrics, "lr"), live.series_frame(metrics, "tokens_per_s"),
        metrics.log.text(60),
    )


def _config_file(text: str) -> str:
    """Write a config to a temp file named by its content (for the Save button)."""
    folder = Path(tempfile.gettempdir()) / "tunelab-configs"
    folder.mkdir(exist_ok=True)
    path = folder / f"config-{hashlib.sha256(text.encode()).hexdigest()[:10]}.yaml"
    if not path.exists():
        path.write_text(text, encoding="utf-8")
    return str(path)
