"""Runs tab: every run with status, model, method, datasets, steps, losses and duration; overlay several runs'
curves and diff their configs; watch, resume, reload, chat with, export or delete a run."""

from __future__ import annotations

from typing import Any

import gradio as gr  # SelectData must resolve at module level for the row-click handler

from tunelab.core.rundir import FINAL_STATES, RunDir, create_run
from tunelab.services.history import config_diff
from tunelab.webui import charts, estimate_view, form, live
from tunelab.webui.studio import Studio
from tunelab.webui.tabs.train import root_blocks

TITLE_KEY = "tab.runs"
COLUMNS = ("run", "status", "model", "method", "datasets", "steps", "final_loss", "best_loss", "duration", "prepare")
REFRESH_S = 3.0


def _text(studio: Studio, key: str, lang: str) -> str:
    return studio.translations.text(key, lang)


def _fmt_loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else ""


def table(studio: Studio, lang: str) -> tuple[Any, list[dict[str, Any]]]:
    """The runs table (headers in ``lang``) and the summaries it shows."""
    import pandas as pd

    summaries = studio.services["history"].summaries()
    jobs = studio.services["jobs"]
    rows = []
    for s in summaries:
        state = s["state"]
        if state not in FINAL_STATES and jobs.stopping(s["path"]):
            state = "stopping"
        steps = f"{s['step']}/{s['total_steps']}" if s["total_steps"] else str(s["step"] or "")
        rows.append([
            s["run_id"], _text(studio, f"state.{state}", lang) if f"state.{state}" in studio.translations.table else state,
            s["model"], s["method"], s["datasets"], steps, _fmt_loss(s["final_loss"]),
            _fmt_loss(s["best_loss"]) + (" (eval)" if s["best_is_eval"] else ""), live.format_duration(s["duration_s"]),
            live.format_duration(s["prepare_s"]),  # model build/load, tokenization, trainer start: apart from training
        ])
    headers = [_text(studio, f"col.{c}", lang) for c in COLUMNS]
    return pd.DataFrame(rows, columns=headers), summaries


def build(studio: Studio) -> None:
    """Lay out the runs table, the run actions and the comparison."""
    with gr.Row():
        refresh = studio.register(gr.Button(studio.t("runs.refresh"), elem_id="runs_refresh", scale=0, min_width=120))
    runs_table = studio.register(gr.Dataframe(
        label=studio.t("runs.table"), elem_id="runs_table", interactive=False, wrap=True,
        headers=[studio.t(f"col.{c}") for c in COLUMNS],
    ))
    with gr.Row():
        selected = studio.register(gr.Dropdown(label=studio.t("runs.selected"), elem_id="run_select", choices=[], scale=2))
        with gr.Column(scale=3):
            actions = {}
            with gr.Row():
                for key in ("open", "resume", "load", "chat", "export", "delete"):
                    variant = "stop" if key == "delete" else "secondary"
                    actions[key] = studio.register(gr.Button(
                        studio.t(f"runs.{key}"), elem_id=f"run_{key}", variant=variant, size="md", min_width=100,
                    ))
    with gr.Row(visible=False) as confirm_row:
        gr.Markdown(studio.t("runs.confirm_question"))
        confirm = studio.register(gr.Button(studio.t("runs.confirm_delete"), variant="stop", elem_id="run_delete_confirm"))
        cancel = studio.register(gr.Button(studio.t("runs.cancel"), elem_id="run_delete_cancel"))
    message = studio.register(gr.Markdown(elem_id="runs_message"))
    estimate_note = studio.register(gr.Markdown(elem_id="runs_estimate"))  # the selected run: estimate vs measured
    with gr.Accordion(studio.t("runs.compare"), open=True):
        with gr.Row():
            compare = studio.register(gr.Dropdown(label=studio.t("runs.compare_pick"), elem_id="runs_compare", multiselect=True, choices=[], scale=3))
            metric = studio.register(gr.Dropdown(
                label=studio.t("runs.compare_metric"), elem_id="compare_metric", choices=["loss"], value="loss", scale=1))
            smoothing = studio.register(gr.Slider(0.0, 0.95, value=0.6, step=0.05, label=studio.t("train.smoothing"), elem_id="compare_smoothing", scale=1))
        compare_plot = studio.register(gr.HTML(elem_id="compare_plot", elem_classes=["tl-chart-box"]))
        diff_note = studio.register(gr.Markdown(elem_id="runs_diff_note"))  # filled by on_compare, in the page's language
        diff_table = studio.register(gr.Dataframe(label=studio.t("runs.diff"), elem_id="runs_diff", interactive=False, wrap=True, visible=False))
    timer = gr.Timer(REFRESH_S)
    language = studio.components["language"]
    seen = gr.State(None)

    def on_refresh(lang: str, current: str | None, picked: list[str] | None, last: Any, force: bool = False) -> tuple:
        frame, summaries = table(studio, lang)
        signature = (lang, frame.to_json())
        if signature == last and not force:
            return (gr.skip(),) * 4
        ids = [s["run_id"] for s in summaries]
        keep = current if current in ids else (ids[0] if ids else None)
        return frame, gr.update(choices=ids, value=keep), gr.update(choices=ids, value=[p for p in picked or [] if p in ids]), signature

    refresh_outputs = [runs_table, selected, compare, seen]
    refresh_inputs = [language, selected, compare, seen]

    def forced(*args: Any) -> tuple:
        return on_refresh(*args, force=True)

    quiet = dict(show_progress="hidden", api_visibility="private")
    refresh.click(forced, inputs=refresh_inputs, outputs=refresh_outputs, api_name="runs")
    timer.tick(on_refresh, inputs=refresh_inputs, outputs=refresh_outputs, **quiet)
    language.change(forced, inputs=refresh_inputs, outputs=refresh_outputs, **quiet)
    root_blocks().load(forced, inputs=refresh_inputs, outputs=refresh_outputs, **quiet)

    def on_row(event: gr.SelectData) -> Any:
        row = event.row_value or []
        return gr.update(value=row[0]) if row else gr.skip()

    runs_table.select(on_row, outputs=[selected], api_visibility="private")

    def on_selected(lang: str, run_id: str | None) -> str:
        if not run_id or not (studio.runs_dir / run_id).is_dir():
            return ""
        history = studio.services["history"]
        run = history.resolve(run_id)
        status = run.status()
        return estimate_view.compare_line(status, history.metrics(run).last, status.get("state") in FINAL_STATES,
                                          lambda key: _text(studio, key, lang))

    selected.change(on_selected, inputs=[language, selected], outputs=[estimate_note], api_name="run_estimate")
    language.change(on_selected, inputs=[language, selected], outputs=[estimate_note], api_visibility="private")

    def on_compare(lang: str, picked: list[str] | None, weight: float, shown: str | None = "loss") -> tuple:
        history = studio.services["history"]
        picked = picked or []
        runs = [history.resolve(p) for p in picked if (studio.runs_dir / p).is_dir()]
        metrics = {r.run_id: history.metrics(r) for r in runs}
        names = sorted({n for m in metrics.values() for n in live.metric_names(m)} | {"loss"}, key=lambda n: (n != "loss", n))
        shown = shown if shown in names else "loss"
        curves = charts.line_chart(live.overlay_series(metrics, weight, shown), _text(studio, "runs.compare_plot", lang),
                                   y_label=shown, empty=_text(studio, "runs.compare_empty", lang))
        picker = gr.update(choices=names, value=shown)
        if len(runs) < 2:
            return curves, _text(studio, "runs.no_diff", lang), gr.update(value=None, visible=False), picker
        configs = history.configs(runs)
        diff = config_diff(configs)
        if not diff:
            return curves, _text(studio, "runs.same_config", lang), gr.update(value=None, visible=False), picker
        import pandas as pd

        frame = pd.DataFrame([[name, *[_show(v) for v in values]] for name, values in diff],
                             columns=[_text(studio, "col.field", lang), *configs])
        return curves, "", gr.update(value=frame, visible=True), picker

    compare_io = dict(inputs=[language, compare, smoothing, metric], outputs=[compare_plot, diff_note, diff_table, metric],
                      show_progress="hidden")
    compare.change(on_compare, api_name="compare", **compare_io)
    metric.change(on_compare, api_visibility="private", **compare_io)
    smoothing.change(on_compare, api_visibility="private", **compare_io)
    language.change(on_compare, api_visibility="private", **compare_io)
    root_blocks().load(on_compare, api_visibility="private", **compare_io)

    studio.services["runs_ui"] = {
        "selected": selected, "message": message, "actions": actions, "confirm_row": confirm_row,
        "confirm": confirm, "cancel": cancel, "refresh": (on_refresh, refresh_inputs, refresh_outputs),
    }


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def connect(studio: Studio) -> None:
    """Run actions that reach into other tabs: watch/resume/load (Train), chat (Chat), export (Export)."""
    ui = studio.services["runs_ui"]
    selected, message, actions = ui["selected"], ui["message"], ui["actions"]
    language, tabs = studio.components["language"], studio.components["tabs"]
    live_state = studio.components["train_live"]
    history, jobs = studio.services["history"], studio.services["jobs"]

    def pick(lang: str, run_id: str | None) -> RunDir:
        if not run_id:
            raise ValueError(_text(studio, "runs.pick_first", lang))
        return history.resolve(run_id)

    def on_open(lang: str, run_id: str | None) -> tuple:
        try:
            run = pick(lang, run_id)
        except ValueError as exc:
            return str(exc), gr.skip(), gr.skip()
        return "", {"run": str(run.path)}, gr.Tabs(selected="train")

    def on_resume(lang: str, run_id: str | None) -> tuple:
        try:
            run = pick(lang, run_id)
            if jobs.active(run.path):
                raise ValueError(f"{run.run_id} is already queued or running")
            config = run.config().model_copy(update={"resume": True, "output_dir": str(run.path)})
            run = create_run(config, studio.runs_dir)
            jobs.submit(run)
        except ValueError as exc:
            return str(exc), gr.skip(), gr.skip()
        jobs.poll()
        return f"{_text(studio, 'runs.resumed', lang)} `{run.run_id}`", {"run": str(run.path)}, gr.Tabs(selected="train")

    actions["open"].click(on_open, inputs=[language, selected], outputs=[message, live_state, tabs], api_name="open_run")
    actions["resume"].click(on_resume, inputs=[language, selected], outputs=[message, live_state, tabs], api_name="resume_run")

    specs = form.field_specs()
    fields = [studio.components[s.name] for s in specs]

    def on_load(lang: str, run_id: str | None) -> list[Any]:
        try:
            config = pick(lang, run_id).config()
        except ValueError as exc:
            return [str(exc), gr.skip(), gr.skip()] + [gr.skip()] * len(fields)
        return ["", gr.Tabs(selected="train"), ""] + form.config_to_values(specs, config)

    actions["load"].click(on_load, inputs=[language, selected], outputs=[message, tabs, studio.components["model_path"], *fields],
                          api_name="load_run_config")
    _connect_target(studio, actions["chat"], "chat_adapter", "chat")
    _connect_target(studio, actions["export"], "export_run", "export")
    _connect_delete(studio)


def _connect_target(studio: Studio, button: Any, component_id: str, tab: str) -> None:
    """'Chat with it' / 'Export it': put the run directory into the other tab's component and switch to it."""
    target = studio.components.get(component_id)
    if target is None:
        button.visible = False
        return
    ui = studio.services["runs_ui"]

    chat = studio.services.get("chat_load") if tab == "chat" else None

    def send(lang: str, run_id: str | None) -> tuple:
        if not run_id:
            return (_text(studio, "runs.pick_first", lang), gr.skip(), gr.skip(), *((gr.skip(),) if chat else ()))
        run = studio.services["history"].resolve(run_id)
        if chat:  # the run's adapter on the base it was trained from, loaded at once
            base = run.config().model
            return "", [str(run.path)], gr.Tabs(selected=tab), base
        return "", str(run.path), gr.Tabs(selected=tab)

    outputs = [ui["message"], target, studio.components["tabs"], *([chat[3]] if chat else [])]
    sent = button.click(send, inputs=[studio.components["language"], ui["selected"]], outputs=outputs, api_name=f"{tab}_run")
    if chat:
        do_load, load_inputs, loaded_outputs, _ = chat
        sent.success(do_load, load_inputs, loaded_outputs, api_visibility="private")


def _connect_delete(studio: Studio) -> None:
    ui = studio.services["runs_ui"]
    language = studio.components["language"]
    on_refresh, refresh_inputs, refresh_outputs = ui["refresh"]

    def ask(lang: str, run_id: str | None) -> tuple:
        if not run_id:
            return _text(studio, "runs.pick_first", lang), gr.update(visible=False)
        return f"**{run_id}**", gr.update(visible=True)

    def really(lang: str, run_id: str | None, current: Any, picked: Any, seen: Any) -> tuple:
        try:
            run = studio.services["history"].resolve(run_id or "")
            studio.services["jobs"].forget(run.path)
            studio.services["history"].delete(run)
        except ValueError as exc:
            return (str(exc), gr.update(visible=False), *(gr.skip(),) * 4)
        return (f"{_text(studio, 'runs.deleted', lang)} `{run_id}`", gr.update(visible=False),
                *on_refresh(lang, None, picked, seen, force=True))

    ui["actions"]["delete"].click(ask, inputs=[language, ui["selected"]], outputs=[ui["message"], ui["confirm_row"]],
                                  api_visibility="private")
    ui["cancel"].click(lambda: ("", gr.update(visible=False)), outputs=[ui["message"], ui["confirm_row"]], api_visibility="private")
    ui["confirm"].click(really, inputs=[language, ui["selected"], *refresh_inputs[1:]],
                        outputs=[ui["message"], ui["confirm_row"], *refresh_outputs], api_name="delete_run")
