"""Train tab: the schema-generated run form, data preview, YAML/command preview, Start/Stop and the live view.

Layout and event wiring only; what the events do is in tunelab.webui.train_actions.
"""

from __future__ import annotations

import json
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.webui import estimate_view, form
from tunelab.webui.studio import Studio
from tunelab.webui.train_actions import TrainActions, dataset_choices, model_choices, template_choices

TITLE_KEY = "tab.train"
PREVIEW_FIELDS = ("model", "template", "stage", "dataset", "dataset_dir", "train_on_prompt", "mask_history", "system_prompt")
TICK_S = 0.5
SCROLL_LOG_JS = "() => { const box = document.querySelector('#log textarea'); if (box) box.scrollTop = box.scrollHeight; }"
# Put each problem of the validation message under the field it names (and open Advanced if that field is there).
MARK_FIELDS_JS = """(text) => {
  document.querySelectorAll('.tl-field-error').forEach(e => e.remove());
  document.querySelectorAll('.tl-invalid').forEach(e => e.classList.remove('tl-invalid'));
  for (const line of (text || '').split('\\n')) {
    const m = /^\\s*(?:\\*\\*[^*]*\\*\\*\\s*)?([a-z_0-9]+)[:.\\[]\\s*(.*)$/.exec(line);
    const box = m && NAMES.includes(m[1]) ? document.getElementById(m[1]) : null;
    if (!box || box.querySelector('.tl-field-error')) continue;
    box.classList.add('tl-invalid');
    const note = document.createElement('div');
    note.className = 'tl-field-error';
    note.textContent = m[2];
    box.appendChild(note);
  }
  return [];
}"""


def root_blocks() -> Any:
    """The Blocks being built (tabs are built inside its context)."""
    from gradio.context import Context

    return Context.root_block


def _label(studio: Studio, name: str) -> str:
    key = f"field.{name}"
    return studio.t(key) if key in studio.translations.table else name


def _choices(spec: form.FieldSpec) -> list[Any] | None:
    """Choices from the registries for the fields that have them (the schema's Literal choices otherwise)."""
    return {"model": model_choices, "template": lambda: template_choices(spec.default)[0],
            "dataset": dataset_choices}.get(spec.name, lambda: None)()


def _form(studio: Studio, specs: list[form.FieldSpec], ui: dict[str, Any]) -> None:
    """Main fields by group, then every other field under Advanced, all generated from the schema."""
    import gradio as gr

    initial = studio.services.get("initial_config") or RunConfig()  # `tunelab webui --config FILE` prefills

    def field(spec: form.FieldSpec, **kwargs: Any) -> None:
        component = form.make_component(spec, _label(studio, spec.name), _choices(spec), getattr(initial, spec.name), **kwargs)
        ui["fields"][spec.name] = studio.register(component)

    ui["fields"] = {}
    for group in form.GROUPS:
        main = [s for s in specs if s.group == group and s.main]
        if not main:
            continue
        with gr.Row():
            for spec in main:
                field(spec, scale=2 if spec.name in ("model", "dataset") else 1)
                if spec.name == "model":
                    ui["model_path"] = studio.register(gr.Textbox(
                        label=studio.t("train.model_path"), info=studio.t("train.model_path_hint"), elem_id="model_path", scale=2,
                    ))
    ui["template_info"] = studio.register(gr.Markdown(elem_id="template_info"))
    with gr.Accordion(studio.t("train.advanced"), open=False, elem_id="advanced"), gr.Tabs():
        for group in form.GROUPS:
            rest = [s for s in specs if s.group == group and not s.main]
            if not rest:
                continue
            with gr.Tab(studio.t(f"group.{group}")):
                for start in range(0, len(rest), 3):
                    with gr.Row():
                        for spec in rest[start:start + 3]:
                            field(spec)


def _previews(studio: Studio, ui: dict[str, Any]) -> None:
    import gradio as gr

    with gr.Accordion(studio.t("train.preview"), open=True):
        with gr.Row():
            ui["data_preview"] = studio.register(gr.HighlightedText(
                label=studio.t("train.preview_label"), elem_id="data_preview", show_legend=True,
                color_map={studio.t("train.trained"): "green"}, scale=4,
            ))
            # the pictures of image rows, captioned with their example's number
            ui["preview_images"] = studio.register(gr.Gallery(
                label=studio.t("train.preview_images"), elem_id="preview_images", visible=False, columns=1, height=360,
                object_fit="contain", interactive=False, scale=1,
            ))
        ui["preview_note"] = studio.register(gr.Markdown(elem_id="preview_note"))
    with gr.Accordion(studio.t("train.config"), open=False):
        with gr.Row():
            ui["yaml"] = studio.register(gr.Code(label=studio.t("train.yaml"), language="yaml", elem_id="config_yaml", interactive=False))
            ui["command"] = studio.register(gr.Code(label=studio.t("train.command"), language="shell", elem_id="config_command", interactive=False))
        with gr.Row():
            ui["save"] = studio.register(gr.DownloadButton(studio.t("train.save"), elem_id="save_config"))
            ui["load"] = studio.register(gr.UploadButton(studio.t("train.load"), file_types=[".yaml", ".yml"], elem_id="load_config"))


def _controls(studio: Studio, ui: dict[str, Any]) -> None:
    """GPU picker, Start/Stop, the validation message, status, progress bar and log tail."""
    import gradio as gr

    gpus = studio.services["jobs"].gpus
    ui["gpus"] = studio.register(gr.CheckboxGroup(
        choices=[(g.label, g.index) for g in gpus], label=studio.t("train.gpus"), elem_id="gpus", visible=bool(gpus),
    ))
    if not gpus:
        gr.Markdown(studio.t("train.gpus_none"))
    _estimate_box(studio, ui, gpus)
    with gr.Row():
        ui["start"] = studio.register(gr.Button(studio.t("train.start"), variant="primary", elem_id="start"))
        ui["stop"] = studio.register(gr.Button(studio.t("train.stop"), variant="stop", elem_id="stop"))
    ui["form_error"] = studio.register(gr.Markdown(elem_id="form_error"))
    ui["train_message"] = studio.register(gr.Markdown(elem_id="train_message"))  # what Start / Stop just did
    ui["status"] = studio.register(gr.Markdown(elem_id="status"))  # filled by the live view, in the page's language
    ui["progress"] = studio.register(gr.HTML(elem_id="progress"))


def _estimate_box(studio: Studio, ui: dict[str, Any], gpus: list[Any]) -> None:
    """Peak memory, tokens/s and time per epoch of the form's config on the picked device, before Start."""
    import gradio as gr

    ui["estimate_device"] = studio.register(gr.Dropdown(
        choices=estimate_view.device_choices(gpus), value=estimate_view.default_device(gpus), elem_id="estimate_device",
        label=studio.t("estimate.for"), info=studio.t("estimate.for_hint"),
    ))
    ui["estimate"] = studio.register(gr.Markdown(elem_id="estimate"))


def _log(studio: Studio, ui: dict[str, Any]) -> None:
    import gradio as gr

    ui["log"] = studio.register(gr.Textbox(
        label=studio.t("train.log"), lines=10, max_lines=10, elem_id="log", interactive=False, autoscroll=True,
    ))


def _plots(studio: Studio, ui: dict[str, Any]) -> None:
    """The live charts (SVG drawn by webui/charts.py): loss, learning rate, tokens/s and the picked other metrics."""
    import gradio as gr

    ui["loss_plot"] = studio.register(gr.HTML(elem_id="loss_plot", elem_classes=["tl-chart-box"]))
    ui["metric_plot"] = studio.register(gr.HTML(elem_id="metric_plot", elem_classes=["tl-chart-box"]))
    with gr.Row():
        ui["lr_plot"] = studio.register(gr.HTML(elem_id="lr_plot", elem_classes=["tl-chart-box"]))
        ui["speed_plot"] = studio.register(gr.HTML(elem_id="speed_plot", elem_classes=["tl-chart-box"]))
    # whichever other metrics the run logs (grad_norm; DPO margins, KL, rewards ...)
    ui["metric_pick"] = studio.register(gr.Dropdown(
        choices=[], value=[], multiselect=True, label=studio.t("train.metric_pick"), info=studio.t("train.metric_pick_hint"),
        elem_id="metric_pick",
    ))
    ui["smoothing"] = studio.register(gr.Slider(0.0, 0.95, value=0.6, step=0.05, label=studio.t("train.smoothing"), elem_id="smoothing"))


def build(studio: Studio) -> None:
    """Lay out the form, the run controls and the live view; wire their events."""
    import gradio as gr

    specs = form.field_specs()
    ui: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            _form(studio, specs, ui)
            _previews(studio, ui)
        with gr.Column(scale=2):  # beside the form: the live view stays in sight while a run trains
            _controls(studio, ui)
            _plots(studio, ui)
            _log(studio, ui)
    # Three states, each with its own writers: a timer tick that began before Start or Stop answered returns what it
    # was given, and would otherwise take their change back with it (e.g. Stop then hits the run watched before).
    ui["live"] = gr.State({"run": None})  # the watched run: Start, Stop, page load and the Runs tab, never a tick
    ui["drawn"] = gr.State({"key": None})  # what the live view last drew: the tick's own (Stop clears it)
    ui["said"] = gr.State(None)  # what Start/Stop last said
    studio.components["train_live"] = ui["live"]
    _wire(studio, specs, ui, TrainActions(studio, specs))


def _wire(studio: Studio, specs: list[form.FieldSpec], ui: dict[str, Any], act: TrainActions) -> None:
    import gradio as gr

    fields = ui["fields"]
    ordered = [fields[s.name] for s in specs]
    language = studio.components["language"]
    form_inputs = [language, ui["model_path"], *ordered]
    quiet = dict(show_progress="hidden", api_visibility="private")
    form_outputs = [ui["yaml"], ui["command"], ui["form_error"], ui["save"]]
    preview_outputs = [fields["template"], ui["template_info"], ui["data_preview"], ui["preview_note"], ui["preview_images"]]
    for component in ordered:
        component.change(act.on_form, inputs=form_inputs, outputs=form_outputs, **quiet)
    # previews run one at a time, in the order they were asked for: a slow earlier one (a model folder read for
    # the first time) must not land after, and overwrite, the preview of the datasets picked since
    in_order = dict(concurrency_id="train_preview", concurrency_limit=1)
    for name in PREVIEW_FIELDS:
        fields[name].change(act.on_preview, inputs=form_inputs, outputs=preview_outputs, **quiet, **in_order)
    ui["model_path"].change(act.on_form, inputs=form_inputs, outputs=form_outputs, show_progress="hidden", api_name="check_form")
    ui["model_path"].change(act.on_preview, inputs=form_inputs, outputs=preview_outputs, show_progress="hidden", api_name="preview",
                            **in_order)
    language.change(act.on_form, inputs=form_inputs, outputs=form_outputs, **quiet)
    language.change(act.on_preview, inputs=form_inputs, outputs=preview_outputs, **quiet, **in_order)
    ui["start"].click(act.on_start, inputs=[language, ui["gpus"], ui["model_path"], *ordered],
                      outputs=[ui["form_error"], ui["live"], ui["said"], ui["train_message"]], api_name="start")
    ui["stop"].click(act.on_stop, inputs=[language, ui["live"]], outputs=[ui["train_message"], ui["drawn"], ui["said"]],
                     api_name="stop")
    language.change(act.said, inputs=[language, ui["said"]], outputs=ui["train_message"], **quiet)
    fields["stage"].change(act.on_stage, inputs=[fields["stage"], fields["dataset"]], outputs=ordered, **quiet)
    root_blocks().load(act.on_stage, inputs=[fields["stage"], fields["dataset"]], outputs=ordered, **quiet)
    ui["load"].upload(act.on_load_file, inputs=[language, ui["load"]], outputs=[ui["form_error"], ui["model_path"], *ordered],
                      api_name="load_config")

    live_inputs = [ui["live"], ui["drawn"], ui["smoothing"], language, ui["metric_pick"]]
    live_outputs = [ui["drawn"], ui["status"], ui["progress"], ui["loss_plot"], ui["lr_plot"], ui["speed_plot"], ui["log"],
                    ui["metric_plot"], ui["metric_pick"]]
    gr.Timer(TICK_S).tick(act.watch, inputs=live_inputs, outputs=live_outputs, show_progress="hidden", api_name="watch")
    ui["smoothing"].change(act.watch, inputs=live_inputs, outputs=live_outputs, **quiet)
    ui["metric_pick"].change(act.watch, inputs=live_inputs, outputs=live_outputs, **quiet)
    language.change(act.watch, inputs=live_inputs, outputs=live_outputs, **quiet)
    estimate_inputs = [language, ui["estimate_device"], ui["model_path"], *ordered]
    ui["estimate_device"].change(act.on_estimate, inputs=estimate_inputs, outputs=[ui["estimate"]],
                                 show_progress="hidden", api_name="estimate")
    for component in [ui["model_path"], language, *ordered]:
        component.change(act.on_estimate, inputs=estimate_inputs, outputs=[ui["estimate"]], **quiet)
    root_blocks().load(act.on_estimate, inputs=estimate_inputs, outputs=[ui["estimate"]], **quiet)
    ui["log"].change(None, js=SCROLL_LOG_JS, **quiet)
    names = json.dumps([s.name for s in specs])
    ui["form_error"].change(None, inputs=[ui["form_error"]], js=MARK_FIELDS_JS.replace("NAMES", names), **quiet)  # keep the newest log lines in view
    root_blocks().load(act.on_page_load, inputs=form_inputs, outputs=[*form_outputs, *preview_outputs, ui["live"]], **quiet)
