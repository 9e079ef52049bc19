"""The studio app: one Gradio Blocks with a tab per module in TABS, shared services, language switching.

Importing this module imports gradio but no torch: every training job runs as its own process (see
tunelab.services.jobs), so the UI starts in seconds and can be closed or restarted while jobs keep running.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from tunelab.webui.i18n import LANGUAGES, Translations, load_translations
from tunelab.webui.studio import Studio

log = logging.getLogger(__name__)

# (name, module) per tab, in display order. A module that is not there (yet) is skipped.
TABS = [
    ("train", "tunelab.webui.tabs.train"),
    ("runs", "tunelab.webui.tabs.runs"),
    ("data", "tunelab.webui.tabs.data"),
    ("chat", "tunelab.webui.tabs.chat"),
    ("evaluate", "tunelab.webui.tabs.evaluate"),
    ("export", "tunelab.webui.tabs.export"),
]
LANGUAGE_NAMES = {"en": "English", "zh": "中文"}
TRANSLATED_PROPS = ("label", "info", "placeholder", "y_title")
TEXT_VALUED = ("Button", "UploadButton", "DownloadButton", "Markdown")

CSS = """
#app_title p { font-size: 1.6em; font-weight: 700; margin: 0.2em 0; }
.tl-progress { font-size: 0.95em; }
.tl-progress-head { display: flex; gap: 0.8em; align-items: center; margin-bottom: 0.3em; flex-wrap: wrap; }
.tl-state { font-weight: 600; padding: 0.05em 0.6em; border-radius: 0.8em; background: var(--neutral-200); color: #222; }
.tl-state-running { background: #cfe8ff; } .tl-state-succeeded { background: #cdeccd; }
.tl-state-failed { background: #f7c6c6; } .tl-state-aborted { background: #f6e0b5; } .tl-state-queued { background: #e3e3e3; }
.tl-bar { height: 0.7em; background: var(--neutral-200); border-radius: 0.35em; overflow: hidden; }
.tl-fill { height: 100%; background: var(--color-accent); transition: width 0.5s; }
.tl-busy { width: 30% !important; animation: tl-slide 1.4s ease-in-out infinite; }
@keyframes tl-slide { from { margin-left: -30%; } to { margin-left: 100%; } }
#form_error { color: var(--error-text-color, #b00020); white-space: pre-line; }
.tl-invalid input, .tl-invalid textarea { border-color: #b00020 !important; box-shadow: 0 0 0 1px #b00020; }
.tl-field-error { color: #b00020; font-size: 0.85em; margin-top: 0.2em; }
.tl-chart { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 4px 6px; }
.tl-chart-title { font-size: 0.85em; color: var(--body-text-color-subdued); }
.tl-chart-svg { width: 100%; height: auto; display: block; }
.tl-chart-empty { height: 90px; display: flex; align-items: center; justify-content: center; color: var(--body-text-color-subdued); }
.tl-legend { display: flex; flex-wrap: wrap; gap: 0.3em 1em; font-size: 0.8em; }
table th, table th span { word-break: keep-all; overflow-wrap: normal; hyphens: none; }
.tl-hist-bar:hover { opacity: 0.8; }
#log textarea { font-family: var(--font-mono); font-size: 0.8em; }
"""


def load_tab_modules(tabs: list[tuple[str, str]] | None = None) -> list[tuple[str, Any]]:
    """(name, module) for every tab module that can be imported; missing ones are skipped."""
    found = []
    for name, module_name in tabs or TABS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                log.info("tab %s: %s is not available, skipped", name, module_name)
                continue
            raise
        found.append((name, module))
    return found


def make_studio(runs_dir: str | Path, lang: str = "en", start_jobs: bool = True, initial_config: Any = None) -> Studio:
    """A Studio with the shared services: the job queue (scheduler started), the run history and the
    config the Train form starts from (a RunConfig; None: the schema defaults)."""
    from tunelab.services.history import RunHistory
    from tunelab.services.gpus import detect_gpus
    from tunelab.services.jobs import JobQueue

    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r} is not available; valid: {', '.join(LANGUAGES)}")
    runs_dir = Path(runs_dir).resolve()
    studio = Studio(runs_dir=runs_dir, translations=load_translations(), lang=lang)
    jobs = JobQueue(runs_dir, gpus=detect_gpus())
    if start_jobs:
        jobs.poll()  # reattach: finish what ended while no studio was running, start what waits
        jobs.start_background()
    studio.services["jobs"] = jobs
    studio.services["history"] = RunHistory(runs_dir)
    if initial_config is not None:
        studio.services["initial_config"] = initial_config
    return studio


def _text_lookup(translations: Translations) -> dict[str, str]:
    """Every translated text (in any language) -> its key."""
    lookup: dict[str, str] = {}
    for key, entry in translations.table.items():
        for lang in LANGUAGES:
            lookup.setdefault(entry[lang], key)
    return lookup


def translatable_blocks(blocks: Any, translations: Translations) -> list[tuple[Any, dict[str, str]]]:
    """Components whose label/info/placeholder (or button/markdown text) came from the translations table."""
    lookup = _text_lookup(translations)
    found = []
    for block in blocks.blocks.values():
        props = {}
        for prop in TRANSLATED_PROPS:
            value = getattr(block, prop, None)
            if isinstance(value, str) and value in lookup:
                props[prop] = lookup[value]
        if type(block).__name__ in TEXT_VALUED and isinstance(getattr(block, "value", None), str):
            if block.value in lookup:
                props["value"] = lookup[block.value]
        if props:
            found.append((block, props))
    return found


def build_app(studio: Studio) -> Any:
    """The Blocks app: a header with the language switch, then one tab per available module."""
    import gradio as gr

    modules = load_tab_modules()
    with gr.Blocks(title=studio.t("app.title"), analytics_enabled=False) as app:
        with gr.Row(equal_height=True):
            gr.Markdown(studio.t("app.title"), elem_id="app_title")
            language = gr.Radio(
                choices=[(LANGUAGE_NAMES[code], code) for code in LANGUAGES], value=studio.lang,
                label=studio.t("app.language"), elem_id="language", scale=0, min_width=220,
            )
        studio.register(language)
        with gr.Tabs(elem_id="tabs") as tabs:
            studio.components["tabs"] = tabs
            for name, module in modules:
                with gr.Tab(studio.t(module.TITLE_KEY), id=name, elem_id=f"tab_{name}"):
                    module.build(studio)
        for _, module in modules:
            if hasattr(module, "connect"):
                module.connect(studio)
        targets = translatable_blocks(app, studio.translations)

        def switch(lang: str) -> list[Any]:
            return [
                gr.update(**{prop: studio.translations.text(key, lang) for prop, key in props.items()})
                for _, props in targets
            ]

        if targets:
            language.change(switch, inputs=language, outputs=[block for block, _ in targets], show_progress="hidden",
                            api_name="set_language")
    return app


def launch(studio: Studio, host: str = "127.0.0.1", port: int = 7860, auth: list[tuple[str, str]] | None = None,
           open_browser: bool = False) -> None:
    """Serve the studio until interrupted."""
    import gradio as gr

    app = build_app(studio)
    app.queue(default_concurrency_limit=8)
    app.launch(
        server_name=host, server_port=port, auth=auth or None, inbrowser=open_browser, ssr_mode=False,
        show_error=True, quiet=False, css=CSS, theme=gr.themes.Soft(), footer_links=["api"], run_history=False,
    )
