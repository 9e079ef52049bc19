"""Data tab: add a dataset (upload, path or hub id) with its format and columns guessed and editable, rename and
delete your datasets, preview rows raw and rendered through the template, and check every row with the
token-length histogram and its cutoff line.

Layout and event wiring only; what the events do is in tunelab.webui.data_actions.
"""

from __future__ import annotations

from typing import Any

from tunelab.core.datafiles import SUFFIXES
from tunelab.core.datasets import FORMATS
from tunelab.webui.data_actions import DataActions, dataset_options
from tunelab.webui.preview import template_names
from tunelab.webui.studio import Studio

TITLE_KEY = "tab.data"


def _add(studio: Studio, ui: dict[str, Any]) -> None:
    """Upload or path, the guess, the editable name/format/columns, Save."""
    import gradio as gr

    t = studio.t
    gr.Markdown(f"### {t('data.add')}")
    ui["upload"] = studio.register(gr.File(label=t("data.upload"), file_types=list(SUFFIXES), type="filepath",
                                           elem_id="data_upload", height=120))
    with gr.Row(equal_height=True):
        ui["source"] = studio.register(gr.Textbox(label=t("data.source"), info=t("data.source_hint"), elem_id="data_source", scale=3))
        ui["inspect"] = studio.register(gr.Button(t("data.inspect"), elem_id="data_inspect", scale=1))
    ui["guess"] = studio.register(gr.Markdown(elem_id="data_guess"))
    with gr.Row():
        ui["name"] = studio.register(gr.Textbox(label=t("data.name"), elem_id="data_name"))
        ui["format"] = studio.register(gr.Dropdown(choices=list(FORMATS), value=None, label=t("data.format"), elem_id="data_format"))
    ui["columns"] = studio.register(gr.Textbox(label=t("data.columns"), info=t("data.columns_hint"), lines=3, elem_id="data_columns"))
    ui["description"] = studio.register(gr.Textbox(label=t("data.description"), elem_id="data_description"))
    ui["save"] = studio.register(gr.Button(t("data.save"), variant="primary", elem_id="data_save"))
    ui["message"] = studio.register(gr.Markdown(elem_id="data_message"))


def _registered(studio: Studio, ui: dict[str, Any]) -> None:
    """The dataset picker, rename/delete, preview settings, raw and rendered rows, Check and its report."""
    import gradio as gr

    t = studio.t
    gr.Markdown(f"### {t('data.registered')}")
    with gr.Row(equal_height=True):
        ui["pick"] = studio.register(gr.Dropdown(choices=dataset_options(), value=None, label=t("data.pick"),
                                                 elem_id="data_pick", scale=3))
        ui["new_name"] = studio.register(gr.Textbox(label=t("data.new_name"), elem_id="data_new_name", scale=2))
        ui["rename"] = studio.register(gr.Button(t("data.rename"), elem_id="data_rename", scale=1))
        ui["delete"] = studio.register(gr.Button(t("data.delete"), variant="stop", elem_id="data_delete", scale=1))
    ui["info"] = studio.register(gr.Markdown(elem_id="data_info"))
    with gr.Row():
        ui["model"] = studio.register(gr.Textbox(value="demo", label=t("data.model"), elem_id="data_model"))
        ui["template"] = studio.register(gr.Dropdown(choices=template_names(), value="auto",
                                                     label=t("data.template"), elem_id="data_template"))
        ui["cutoff"] = studio.register(gr.Number(value=1024, precision=0, label=t("data.cutoff"), elem_id="data_cutoff"))
        ui["validation"] = studio.register(gr.Dropdown(choices=dataset_options(), value=None, label=t("data.validation"),
                                                       elem_id="data_validation"))
    with gr.Row():
        ui["raw"] = studio.register(gr.Code(label=t("data.raw"), language="json", interactive=False, elem_id="data_raw"))
        ui["rendered"] = studio.register(gr.HighlightedText(label=t("data.rendered"), show_legend=True, elem_id="data_rendered"))
    ui["preview_note"] = studio.register(gr.Markdown(elem_id="data_preview_note"))
    ui["check"] = studio.register(gr.Button(t("data.check"), variant="primary", elem_id="data_check"))
    ui["report"] = studio.register(gr.Markdown(elem_id="data_report"))
    ui["histogram"] = studio.register(gr.HTML(elem_id="data_histogram", elem_classes=["tl-chart-box"]))


def build(studio: Studio) -> None:
    """Lay out the tab and wire its own events."""
    import gradio as gr

    ui: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=2):
            _add(studio, ui)
        with gr.Column(scale=3):
            _registered(studio, ui)
    ui["upload_state"] = gr.State(None)
    studio.services["data_ui"] = ui
    act = DataActions(studio)
    lang = studio.components["language"]
    guessed = [ui["guess"], ui["name"], ui["format"], ui["columns"]]
    ui["upload"].upload(act.on_upload, inputs=[lang, ui["upload"]], outputs=[ui["upload_state"], *guessed], api_name="data_upload")
    ui["upload"].clear(lambda: None, outputs=[ui["upload_state"]], api_name=False)  # Save then reads the path box
    for event in (ui["inspect"].click, ui["source"].submit):
        event(act.on_inspect, inputs=[lang, ui["source"]], outputs=[ui["upload_state"], *guessed], api_name=False)
    edited = [ui["message"], ui["pick"], ui["validation"]]
    save_inputs = [lang, ui["upload_state"], ui["source"], ui["name"], ui["format"], ui["columns"], ui["description"],
                   ui["validation"]]
    ui["changed"] = [  # the Train tab's dropdown follows these (connect)
        ui["save"].click(act.on_save, inputs=save_inputs, outputs=edited, api_name="data_save"),
        ui["rename"].click(act.on_rename, inputs=[lang, ui["pick"], ui["new_name"], ui["validation"]], outputs=edited,
                           api_name="data_rename"),
        ui["delete"].click(act.on_delete, inputs=[lang, ui["pick"], ui["validation"]], outputs=edited, api_name="data_delete"),
    ]
    shown = [ui["info"], ui["new_name"], ui["raw"], ui["rendered"], ui["preview_note"]]
    for component in (ui["pick"], ui["template"]):
        component.change(act.on_pick, inputs=[lang, ui["pick"], ui["model"], ui["template"]], outputs=shown,
                         show_progress="hidden", api_name=False)
    ui["model"].submit(act.on_pick, inputs=[lang, ui["pick"], ui["model"], ui["template"]], outputs=shown, api_name=False)
    ui["check"].click(act.on_check, inputs=[lang, ui["pick"], ui["model"], ui["template"], ui["cutoff"], ui["validation"]],
                      outputs=[ui["report"], ui["histogram"]], api_name="data_check")


def connect(studio: Studio) -> None:
    """After a save, rename or delete, the Train tab's dataset dropdown offers the datasets as they now are."""
    ui = studio.services["data_ui"]
    stage, dataset = studio.components.get("stage"), studio.components.get("dataset")
    if stage is None or dataset is None:  # no Train tab
        return
    from tunelab.webui.data_actions import train_datasets

    for event in ui["changed"]:
        event.then(train_datasets, inputs=[stage, dataset], outputs=[dataset], show_progress="hidden", api_name=False)
