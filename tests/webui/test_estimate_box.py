"""The Train tab's estimate box answers the form through gradio_client (the GPU is mocked: none exists on this
machine), warns when the run will not fit, and the Runs tab sets a run's recorded estimate beside what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.core.config import RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.rundir import create_run
from tunelab.services.gpus import Gpu
from tunelab.webui import app, form

LLAMA8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8)


def values(**fields) -> list:
    base = dict(dataset=["identity"], cutoff_len=2048, batch_size=2, gradient_checkpointing=True)
    return form.config_to_values(form.field_specs(), RunConfig(**{**base, **fields}))


@pytest.mark.slow  # 16 s on the loaded 2-core box: most of it building and serving the two tabs
def test_estimate_box_and_estimate_vs_measured(tmp_path: Path, monkeypatch) -> None:
    from gradio_client import Client

    model = tmp_path / "llama8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA8B))  # the estimate reads only the config
    runs = tmp_path / "runs"
    run = create_run(RunConfig(output_dir=str(runs / "r1")))
    recorded = {"reserved_gib": 18.8, "allocated_gib": 16.6, "tokens_per_s": 9464.0, "needed_gib": 19.0,
                "memory_gib": 140.4, "fits": True, "path": "fast", "device": "NVIDIA H200"}
    run.set_status("running", estimate=recorded)  # as the trainer records it at start
    EventWriter(run.events_file).write("train", step=11, total_steps=11, loss=1.0, peak_reserved_gb=18.869,
                                       tokens_per_s_avg=9807.2)  # what a GPU run measured (h200-product.json's row)
    run.set_status("succeeded")
    monkeypatch.setattr(app, "TABS", app.TABS[:2])
    studio = app.make_studio(runs, start_jobs=False)
    studio.services["jobs"].gpus = [Gpu("0", "NVIDIA H100 80GB HBM3", 81559)]  # mocked GPU
    blocks = app.build_app(studio)
    assert studio.components["estimate_device"].value == "0"
    blocks.queue().launch(prevent_thread_lock=True, server_port=None, ssr_mode=False, quiet=True)
    try:
        client = Client(blocks.local_url, verbose=False)
        box = client.predict("en", "0", str(model), *values(), api_name="/estimate")
        assert "GiB of 80 GiB on GPU 0: NVIDIA H100 80GB HBM3" in box and "tok/s" in box and "/epoch" in box
        assert "fits (" in box and "⚠️" not in box
        box = client.predict("en", "RTX 4090", str(model), *values(method="full"), api_name="/estimate")
        assert "⚠️ **Will not fit**" in box and "of 24 GiB on RTX 4090" in box and "Would fit better with" in box
        bad = values()
        bad[[s.name for s in form.field_specs()].index("learning_rate")] = -1
        box = client.predict("zh", "0", str(model), *bad, api_name="/estimate")
        assert box == "*表单有效后显示预估。*"  # an invalid form: no estimate yet
        client.predict("en", None, [], api_name="/runs")  # the runs list fills the run picker
        line = client.predict("en", "r1", api_name="/run_estimate")
        assert line == ("**Estimate vs measured:** 18.8 vs 18.9 GiB reserved (-0%), 9,464 vs 9,807 tok/s (-3%)"
                        " · NVIDIA H200")
    finally:
        blocks.close()


def test_no_estimate_for_a_form_start_refuses(tmp_path: Path) -> None:
    """A number field holding no number: Start refuses the form, so the box waits instead of estimating defaults."""
    from tunelab.webui.train_actions import TrainActions

    model = tmp_path / "llama8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA8B))
    studio = app.make_studio(tmp_path / "runs", start_jobs=False)
    studio.services["jobs"].gpus = [Gpu("0", "NVIDIA H100 80GB HBM3", 81559)]
    act = TrainActions(studio, form.field_specs())
    good = values()
    assert "GiB of 80 GiB on GPU 0" in act.on_estimate("en", "0", str(model), *good)
    bad = list(good)
    bad[[s.name for s in form.field_specs()].index("cutoff_len")] = "abc"
    assert act.check((str(model), *bad))[0] is None  # what Start checks
    assert act.on_estimate("en", "0", str(model), *bad) == "*The estimate appears once the form is a valid config.*"
