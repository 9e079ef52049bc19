"""The app built in-process (no trainer needed): tabs load from the TABS table and missing ones are skipped,
the GPU picker appears only with GPUs (mocked here: no GPU exists on this machine), and the Runs tab hands a
run to the Chat and Export tabs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.core.config import RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.rundir import create_run
from tunelab.services.gpus import Gpu
from tunelab.webui import app


def test_missing_tab_modules_are_skipped() -> None:
    loaded = app.load_tab_modules([("train", "tunelab.webui.tabs.train"), ("nope", "tunelab.webui.tabs.not_written_yet")])
    assert [name for name, _ in loaded] == ["train"]
    with pytest.raises(ModuleNotFoundError, match="tunelab_no_such_dependency"):  # a broken tab is a real error
        app.load_tab_modules([("broken", "tests.webui.fake_tab_broken")])


def test_gpu_picker_lists_the_devices(tmp_path: Path) -> None:
    studio = app.make_studio(tmp_path, start_jobs=False)
    studio.services["jobs"].gpus = [Gpu("0", "mock H100", 81559), Gpu("1", "mock H100", 81559)]  # mocked GPUs
    app.build_app(studio)
    picker = studio.components["gpus"]
    assert picker.visible and [c[1] for c in picker.choices] == ["0", "1"]
    assert picker.choices[0][0] == "GPU 0: mock H100 (80 GiB)"
    studio = app.make_studio(tmp_path / "cpu", start_jobs=False)
    studio.services["jobs"].gpus = []
    app.build_app(studio)
    assert not studio.components["gpus"].visible


def test_runs_tab_sends_a_run_to_chat_and_export(tmp_path: Path, monkeypatch) -> None:
    from gradio_client import Client

    monkeypatch.setattr(app, "TABS", [*app.TABS[:2], ("chat", "tests.webui.fake_tabs")])
    runs = tmp_path / "runs"
    run = create_run(RunConfig(output_dir=str(runs / "r1")))
    EventWriter(run.events_file).write("train", step=1, total_steps=2, loss=1.0)
    run.set_status("succeeded")
    studio = app.make_studio(runs, start_jobs=False)
    blocks = app.build_app(studio)
    blocks.queue().launch(prevent_thread_lock=True, server_port=None, ssr_mode=False, quiet=True)
    try:
        client = Client(blocks.local_url, verbose=False)
        table, selected, _ = client.predict("en", None, [], api_name="/runs")
        assert table["data"][0][:2] == ["r1", "succeeded"]
        message, adapter = client.predict("en", "r1", api_name="/chat_run")
        assert message == "" and adapter == str(run.path)
        message, target = client.predict("en", "r1", api_name="/export_run")
        assert target == str(run.path)
        message, _ = client.predict("en", None, api_name="/chat_run")
        assert message == "Select a run first."
    finally:
        blocks.close()


def test_a_config_file_prefills_the_form(tmp_path: Path) -> None:
    from tunelab.core.config import load_config

    example = Path(__file__).resolve().parents[2] / "examples" / "demo_cpu_lora_sft.yaml"  # what `make webui` opens
    studio = app.make_studio(tmp_path, start_jobs=False, initial_config=load_config(example))
    app.build_app(studio)
    values = {name: studio.components[name].value for name in ("model", "learning_rate", "num_epochs", "lora_rank", "warmup_ratio")}
    assert values == {"model": "demo", "learning_rate": "0.003", "num_epochs": "12.0", "lora_rank": "16", "warmup_ratio": "0.05"}
    assert studio.components["dataset"].value == ["identity"]


REQUIRED_IDS = ("model", "template", "method", "stage", "dataset", "learning_rate", "num_epochs", "max_steps", "start", "stop",
                "status", "progress", "loss_plot", "runs_table")


def test_stable_elem_ids_and_config_save_load(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    from tunelab.webui import form

    studio = app.make_studio(tmp_path / "runs", start_jobs=False)
    blocks = app.build_app(studio)
    assert [i for i in REQUIRED_IDS if i not in studio.components] == []
    specs = form.field_specs()
    blocks.queue().launch(prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        client = Client(blocks.local_url, verbose=False)
        values = form.config_to_values(specs, RunConfig(dataset=["alpaca_demo"], lora_rank=32, max_steps=7))
        yaml_text, command, error, saved = client.predict("en", "", *values, api_name="/check_form")
        assert error == "" and Path(saved).read_text().strip() == yaml_text.strip() and "lora_rank: 32" in yaml_text
        upload = tmp_path / "mine.yaml"
        upload.write_text("model: demo\nmethod: full\nlearning_rate: 5.0e-5\ndataset: [identity, alpaca_demo]\n")
        message, model_path, *loaded = client.predict("en", handle_file(str(upload)), api_name="/load_config")
        assert message == "Config loaded: `mine.yaml`"
        by_name = dict(zip([s.name for s in specs], loaded))
        assert by_name["method"] == "full" and by_name["learning_rate"] == "5e-05" and by_name["dataset"] == ["identity", "alpaca_demo"]
        upload.write_text("method: lora\nlora_rank: 0\n")
        message, *_ = client.predict("en", handle_file(str(upload)), api_name="/load_config")
        assert "lora_rank: 0 is not valid" in message
    finally:
        blocks.close()


def test_stop_with_nothing_watched_says_so_and_keeps_the_state(tmp_path: Path) -> None:
    import gradio as gr

    from tunelab.webui import form
    from tunelab.webui.train_actions import TrainActions

    actions = TrainActions(app.make_studio(tmp_path, start_jobs=False), form.field_specs())
    message, state, said = actions.on_stop("zh", {})
    assert message == "没有正在运行的训练，未停止任何训练"
    assert isinstance(state, type(gr.skip())) and said["said"]["key"] == "train.nothing_to_stop"
    assert actions.said("en", said) == "nothing running, nothing stopped"  # a language switch re-renders it


def test_no_live_view_tick_writes_the_watched_run(tmp_path: Path) -> None:
    """A tick that began before Start (or Stop) answered returns what it was given: were the watched run among its
    outputs, it would take Start's pick back and Stop would then stop the run watched before."""
    studio = app.make_studio(tmp_path, start_jobs=False)
    blocks = app.build_app(studio)
    live = studio.components["train_live"]._id
    writers = {fn.name for fn in blocks.fns.values() if live in [block._id for block in fn.outputs]}
    assert writers and all(name in {"on_start", "on_page_load", "on_open", "on_resume"} for name in writers), writers
    watchers = [fn for fn in blocks.fns.values() if fn.name == "watch"]
    assert len(watchers) == 4 and all(live in [block._id for block in fn.inputs] for fn in watchers)
