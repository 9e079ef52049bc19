"""Stand-ins for the Chat and Export tabs (written elsewhere): just the components the Runs tab fills."""

from __future__ import annotations

TITLE_KEY = "app.title"


def build(studio) -> None:
    import gradio as gr

    studio.register(gr.Textbox(label="adapter", elem_id="chat_adapter"))
    studio.register(gr.Textbox(label="export run", elem_id="export_run"))
