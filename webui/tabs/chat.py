"""The Chat tab: load a base model with zero or more adapters in a worker process, chat with streaming, and
compare the base model with a fine-tuned adapter side by side.

The model lives in a `tunelab api` worker (services.chat_worker.ChatService, kept in studio.services["chat"]);
this module imports no torch. The Runs tab's 'chat with it' puts a run directory into ``chat_adapter``; the
tab then selects the base model that run was trained on.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import gradio as gr

from tunelab.core.generation import EngineCrashed, InferenceError, SamplingParams
from tunelab.core.media import user_message
from tunelab.core.paths import home_dir
from tunelab.core.generation import CHAT_TEMPERATURE
from tunelab.core.rundir import list_runs
from tunelab.core.serving import DTYPES, ENGINES, EngineOptions
from tunelab.services.chat_worker import ChatService, side_by_side
from tunelab.webui.jobs_view import language_of
from tunelab.webui.preview import template_names

TITLE_KEY = "tab.chat"
LIST_TICK_S = 3.0
THINK_TAGS = [("<think>", "</think>")]


def adapter_choices(runs_dir: Path) -> list[tuple[str, str]]:
    """(label, path) of every run that saved an adapter, newest first."""
    return [(run.run_id, str(run.path)) for run in list_runs(runs_dir) if (run.adapter_dir / "adapter_config.json").is_file()]


def model_choices(runs_dir: Path) -> list[tuple[str, str]]:
    """The demo models, the base models runs were trained on, and runs that saved a full model."""
    choices: dict[str, str] = {"demo": "demo", "demo-vlm": "demo-vlm"}
    for run in list_runs(runs_dir):
        if (run.model_dir / "config.json").is_file():
            choices[str(run.model_dir)] = f"{run.run_id} (full model)"
        try:
            model = run.config().model
        except Exception:  # an unreadable config: skip it
            continue
        choices.setdefault(model, model)
    return [(label, value) for value, label in choices.items()]


def _service(studio: Any) -> ChatService:
    if "chat" not in studio.services:
        studio.services["chat"] = ChatService(log_dir=home_dir() / "chat-workers", runs_dir=studio.runs_dir)
    return studio.services["chat"]


def build(studio: Any) -> None:
    """Lay out the tab and wire its events (each handler speaks the page's language, ``lang``)."""
    t, reg, service = studio.t, studio.register, _service(studio)
    language = language_of(studio)

    def words(lang: str) -> Any:
        return lambda key: studio.translations.text(key, lang)
    with gr.Row():
        model = reg(gr.Dropdown(model_choices(studio.runs_dir), value="demo", label=t("chat.model"), info=t("chat.model.info"),
                                allow_custom_value=True, elem_id="chat_model", scale=3))
        adapter = reg(gr.Dropdown(adapter_choices(studio.runs_dir), value=[], multiselect=True, allow_custom_value=True,
                                  label=t("chat.adapter"), info=t("chat.adapter.info"), elem_id="chat_adapter", scale=4))
        engine = reg(gr.Radio(list(ENGINES), value="hf", label=t("chat.engine"), elem_id="chat_engine", scale=2))
        dtype = reg(gr.Dropdown(list(DTYPES), value="auto", label=t("chat.dtype"), elem_id="chat_dtype", scale=1))
    with gr.Accordion(t("chat.engine_options"), open=False, elem_id="chat_engine_options"):
        with gr.Row():
            base_url = reg(gr.Textbox(label=t("chat.base_url"), placeholder="http://127.0.0.1:8000/v1", elem_id="chat_base_url"))
            remote_key = reg(gr.Textbox(label=t("chat.remote_key"), type="password", elem_id="chat_remote_key"))
            vllm_python = reg(gr.Textbox(label=t("chat.vllm_python"), value=os.environ.get("TUNELAB_VLLM_PYTHON", ""),
                                         elem_id="chat_vllm_python"))
            template = reg(gr.Dropdown(template_names(), value="auto", label=t("chat.template"), elem_id="chat_template"))
    with gr.Row():
        load = reg(gr.Button(t("chat.load"), variant="primary", elem_id="chat_load"))
        unload = reg(gr.Button(t("chat.unload"), elem_id="chat_unload"))
        refresh = reg(gr.Button(t("chat.refresh"), elem_id="chat_refresh", size="sm"))
    status = reg(gr.Markdown(elem_id="chat_status"))  # filled at page load, in the page's language, with what is loaded
    with gr.Row():
        target = reg(gr.Dropdown([], label=t("chat.target"), elem_id="chat_target", scale=3, allow_custom_value=True))
        compare = reg(gr.Checkbox(False, label=t("chat.compare"), elem_id="chat_compare", scale=2))
    system = reg(gr.Textbox(label=t("chat.system"), lines=1, elem_id="chat_system"))
    sampling = _sampling_controls(studio)
    with gr.Row():
        output_base = reg(gr.Chatbot(label=t("chat.output_base"), visible=False, reasoning_tags=THINK_TAGS,
                                     elem_id="chat_output_base", height=420))
        output = reg(gr.Chatbot(label=t("chat.output"), reasoning_tags=THINK_TAGS, elem_id="chat_output", height=420))
    with gr.Row():
        user_input = reg(gr.Textbox(label=t("chat.input"), placeholder=t("chat.input.placeholder"), elem_id="chat_input", scale=4))
        image = reg(gr.Image(type="filepath", sources=["upload"], label=t("chat.image"), elem_id="chat_image", height=140, scale=1))
    with gr.Row():
        send = reg(gr.Button(t("chat.send"), variant="primary", elem_id="chat_send"))
        regenerate = reg(gr.Button(t("chat.regenerate"), elem_id="chat_regenerate"))
        stop = reg(gr.Button(t("chat.stop"), elem_id="chat_stop"))
        clear = reg(gr.Button(t("chat.clear"), elem_id="chat_clear"))
    history, history_base = gr.State([]), gr.State([])

    def do_load(lang, model_v, adapters_v, engine_v, dtype_v, url_v, key_v, vllm_v, template_v):
        t, what = words(lang), model_v or "?"
        yield t("chat.status.loading").format(what=what, engine=engine_v), gr.update(), [], [], [], []
        options = EngineOptions(engine=engine_v, dtype=dtype_v, base_url=url_v or None, api_key=key_v or None,
                                vllm_python=vllm_v or None)
        with ThreadPoolExecutor(1) as pool:  # a worker takes a while (vLLM above all): say how long and what its log
            # says, or, while it waits in the job queue for a GPU, which job holds it
            loading, started = pool.submit(service.load, model_v or None, list(adapters_v or []), options, template_v or "auto"), time.monotonic()
            while not wait([loading], timeout=1.0).done:
                seconds, note = f" {time.monotonic() - started:.0f} s", service.starting_note()
                if service.waiting:
                    yield t("chat.status.waiting").format(message=service.waiting) + seconds, gr.update(), [], [], [], []
                else:
                    yield (t("chat.status.loading").format(what=what, engine=engine_v) + seconds + (f"  \n`{note}`" if note else ""),
                           gr.update(), [], [], [], [])
        try:
            served = loading.result()
        except (InferenceError, EngineCrashed) as exc:
            yield t("chat.status.error").format(message=exc), gr.update(choices=[], value=None), [], [], [], []
            return
        names = [m.id for m in served]
        first = next((m.id for m in served if m.parent), names[0] if names else None)
        text = t("chat.status.loaded").format(engine=service.engine_name, where=service.description, names=", ".join(names))
        base = next((m.id for m in served if m.parent is None), None)
        yield text, gr.update(choices=names, value=first), [], gr.update(value=[], label=base or t("chat.output_base")), [], []

    def status_line(lang: str) -> str:
        """What is loaded now, in ``lang`` (after a language switch: the same state, in the new words)."""
        return sync(lang)[0]

    def sync(lang: str):
        """A fresh page shows what is loaded (the worker is shared by every browser session)."""
        t = words(lang)
        if not service.loaded:
            return t("chat.status.none"), gr.update(choices=[], value=None)
        try:
            served = service.models()
        except (InferenceError, EngineCrashed) as exc:
            return t("chat.status.error").format(message=exc), gr.update(choices=[], value=None)
        names = [m.id for m in served]
        first = next((m.id for m in served if m.parent), names[0] if names else None)
        return t("chat.status.loaded").format(engine=service.engine_name, where=service.description, names=", ".join(names)), gr.update(choices=names, value=first)

    def do_unload(lang):
        t = words(lang)
        service.unload()
        return t("chat.status.unloaded"), gr.update(choices=[], value=None)

    def do_send(lang, message, image_v, target_v, compare_v, system_v, hist, hist_base, *knobs):
        t = words(lang)
        if not (message or "").strip() and not image_v:
            yield gr.update(), gr.update(), hist, hist_base, gr.update(), gr.update()
            return
        turn = user_message(message or "", [image_v] if image_v else [])  # both sides of a compare see the same picture
        hist = hist + [turn]
        hist_base = hist_base + [turn] if compare_v else hist_base
        yield from _respond(service, t, target_v, compare_v, system_v, hist, hist_base, knobs)

    def do_regenerate(lang, target_v, compare_v, system_v, hist, hist_base, *knobs):
        t = words(lang)
        hist, hist_base = _drop_reply(hist), _drop_reply(hist_base)
        if not hist:
            yield gr.update(), gr.update(), hist, hist_base, gr.update(), gr.update()
            return
        yield from _respond(service, t, target_v, compare_v, system_v, hist, hist_base, knobs)

    loaded_outputs = [status, target, output, output_base, history, history_base]
    load_inputs = [language, model, adapter, engine, dtype, base_url, remote_key, vllm_python, template]
    load.click(do_load, load_inputs, loaded_outputs, api_name="chat_load")
    studio.services["chat_load"] = (do_load, load_inputs, loaded_outputs, model)  # the Runs tab's "Chat with it"
    unload.click(do_unload, language, [status, target], api_name="chat_unload")
    if gr.context.Context.root_block is not None:
        gr.context.Context.root_block.load(sync, language, [status, target], api_visibility="private")
    if "language" in studio.components:
        language.change(status_line, language, status, show_progress="hidden", api_visibility="private")
    refresh.click(lambda: (gr.update(choices=model_choices(studio.runs_dir)), gr.update(choices=adapter_choices(studio.runs_dir))),
                  None, [model, adapter], api_name="chat_refresh")
    seen = gr.State(None)  # the lists follow runs that finish or are deleted while the page is open
    gr.Timer(LIST_TICK_S).tick(lambda last: _lists_update(studio.runs_dir, last), seen, [model, adapter, seen],
                               show_progress="hidden", api_visibility="private")
    compare.change(lambda on: gr.update(visible=on), compare, output_base, api_visibility="private")
    adapter.change(_base_for_adapters, [adapter, model], [model, adapter], api_visibility="private")
    target.change(lambda name: gr.update(label=name or t("chat.output")), target, output, api_visibility="private")
    chat_outputs = [output, output_base, history, history_base, status, user_input]
    knob_inputs = [target, compare, system, history, history_base, *sampling]
    sent = send.click(do_send, [language, user_input, image, *knob_inputs], chat_outputs, api_name="chat_send")
    submitted = user_input.submit(do_send, [language, user_input, image, *knob_inputs], chat_outputs, api_visibility="private")
    for event in (sent, submitted):  # the picture belongs to the message just sent
        event.then(lambda: None, None, image, api_visibility="private")
    regenerated = regenerate.click(do_regenerate, [language, *knob_inputs], chat_outputs, api_name="chat_regenerate")
    stop.click(None, None, None, cancels=[sent, submitted, regenerated])
    clear.click(lambda: ([], [], [], []), None, [output, output_base, history, history_base], api_name="chat_clear")


def _lists_update(runs_dir: Path, last: Any) -> tuple:
    """New model and adapter choices when the runs changed since ``last`` (a signature), else skips."""
    models, adapters = model_choices(runs_dir), adapter_choices(runs_dir)
    signature = [[list(c) for c in models], [list(c) for c in adapters]]
    if signature == last:
        return gr.skip(), gr.skip(), gr.skip()
    return gr.update(choices=models), gr.update(choices=adapters), signature


def _sampling_controls(studio: Any) -> list[Any]:
    t, reg, d = studio.t, studio.register, SamplingParams()
    with gr.Accordion(t("chat.sampling"), open=False, elem_id="chat_sampling"):
        with gr.Row():
            # 0.3, not the API's 0.7: checking a fine-tune wants answers that are mostly the model's best guess
            # (measured on the demo adapter: 6/6 seeds answer as Tuna at 0.3, 4/6 garbled ones at 0.7).
            temperature = reg(gr.Slider(0, 2, value=CHAT_TEMPERATURE, step=0.05, label=t("chat.temperature"), elem_id="chat_temperature"))
            top_p = reg(gr.Slider(0.05, 1, value=d.top_p, step=0.05, label=t("chat.top_p"), elem_id="chat_top_p"))
            top_k = reg(gr.Slider(0, 200, value=d.top_k, step=1, label=t("chat.top_k"), elem_id="chat_top_k"))
        with gr.Row():
            max_new = reg(gr.Slider(1, 4096, value=d.max_new_tokens, step=1, label=t("chat.max_new_tokens"), elem_id="chat_max_new_tokens"))
            penalty = reg(gr.Slider(0.5, 2, value=d.repetition_penalty, step=0.05, label=t("chat.repetition_penalty"),
                                    elem_id="chat_repetition_penalty"))
            seed = reg(gr.Number(value=-1, precision=0, minimum=-1, label=t("chat.seed"), elem_id="chat_seed"))
    return [temperature, top_p, top_k, max_new, penalty, seed]


def _base_for_adapters(adapters: list[str] | str | None, model: str | None) -> Any:
    """When a run or adapter is picked (e.g. by the Runs tab's 'chat with it'), select the base model it was
    trained on; a run that saved a full model becomes the model itself."""
    from tunelab.core.rundir import RunDir
    from tunelab.services.inference import resolve_adapter

    picked = [adapters] if isinstance(adapters, str) else list(adapters or [])
    if not picked:
        return gr.update(), gr.update()
    full = RunDir(picked[0]).model_dir
    if (full / "config.json").is_file():
        return gr.update(value=str(full)), gr.update(value=picked[1:])
    try:
        base = resolve_adapter(picked[0]).base_model
    except InferenceError:
        return gr.update(), gr.update()
    return (gr.update(value=base) if base and base != model else gr.update()), gr.update()


def _drop_reply(hist: list[dict]) -> list[dict]:
    """The history without its last assistant reply (for regenerate)."""
    hist = list(hist)
    while hist and hist[-1]["role"] == "assistant":
        hist.pop()
    return hist


def _params(knobs: tuple) -> SamplingParams:
    temperature, top_p, top_k, max_new, penalty, seed = knobs
    return SamplingParams(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k), max_new_tokens=int(max_new),
                          repetition_penalty=float(penalty), seed=None if seed in (None, "") or int(seed) < 0 else int(seed))


def _respond(service: ChatService, t: Any, target: str | None, compare: bool, system: str, hist: list, hist_base: list, knobs: tuple):
    """Stream the reply (two replies in compare mode) into the chatbots; yields the chat outputs."""
    try:
        params = _params(knobs)
        base = next((m.id for m in service.models() if m.parent is None), None)
        if not service.loaded or not target:
            raise InferenceError(t("chat.status.none"))
    except (InferenceError, EngineCrashed) as exc:
        yield hist, hist_base, hist, hist_base, t("chat.status.error").format(message=exc), ""
        return
    if compare and (base is None or target == base):
        yield hist, hist_base, hist, hist_base, t("chat.status.compare_needs_adapter"), ""
        return
    sides = [(target, hist)] + ([(base, hist_base)] if compare else [])
    prefix = [{"role": "system", "content": system}] if (system or "").strip() else []
    replies = ["" for _ in sides]
    started, notes, errors, failed = time.monotonic(), ["" for _ in sides], [], set()

    def opener(name: str, conversation: list):
        return lambda cancel: service.chat(name, prefix + conversation, params, cancel)

    def view(i: int) -> list:
        return sides[i][1] + [{"role": "assistant", "content": replies[i]}]

    def views(final: bool = False) -> tuple[list, list]:
        # a side that failed before writing anything keeps no empty answer in its history
        shown = [sides[i][1] if final and i in failed and not replies[i] else view(i) for i in range(len(sides))]
        return shown[0], (shown[1] if compare else hist_base)

    yield *views(), *views(), gr.update(), ""
    streams = side_by_side([opener(name, conv) for name, conv in sides])
    try:
        for index, item in streams:
            if isinstance(item, BaseException):
                errors.append(t("chat.status.error").format(message=item))
                failed.add(index)
                continue
            replies[index] += item.text
            if item.finish_reason:
                notes[index] = t("chat.status.usage").format(name=sides[index][0], prompt=item.prompt_tokens,
                                                             completion=item.completion_tokens, seconds=time.monotonic() - started)
            yield *views(), *views(), gr.update(), ""
    finally:
        streams.close()
    yield *views(True), *views(True), "  \n".join([*errors, *[n for n in notes if n]]), ""
