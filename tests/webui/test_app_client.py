"""The studio through gradio_client, against a real `tunelab webui` process: form validation, data preview,
a real training job on a tiny model streamed live, the runs table, comparison, language switch, delete."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tunelab.core.config import RunConfig
from tunelab.webui import form

pytestmark = pytest.mark.timeout(400)


def form_values(**fields: Any) -> list[Any]:
    return form.config_to_values(form.field_specs(), RunConfig(**fields))


def test_startup_is_quick_torch_free_and_behind_the_login(studio_server, tmp_path: Path) -> None:
    from gradio_client import Client

    logins = tmp_path / "logins"
    logins.write_text("ann:secret\n")
    server = studio_server("--auth-file", str(logins)).start()
    print(f"studio answered after {server.startup_s:.1f}s")
    assert not server.imported_torch()
    assert server.startup_s < 60, server.startup_s  # measured 5-8 s here; generous for a loaded CI box
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(server.url, verbose=False)  # no login, no app
    client = Client(server.url, auth=("ann", "secret"), verbose=False)
    table, *_ = client.predict("en", None, [], api_name="/runs")
    assert table["data"] == [] or table["data"] == [["" for _ in table["headers"]]]


def test_train_watch_compare_and_delete_through_the_client(studio_server, tiny_model_dir: Path) -> None:
    from gradio_client import Client

    server = studio_server().start()
    client = Client(server.url, verbose=False)

    bad = form_values(dataset=["identity"])
    bad[[s.name for s in form.field_specs()].index("learning_rate")] = -1
    yaml_text, command, error, _ = client.predict("en", "", *bad, api_name="/check_form")
    assert "learning_rate: -1.0 is not valid" in error and yaml_text == "" and command == ""
    message, *_ = client.predict("en", [], "", *bad, api_name="/start")
    assert "learning_rate" in message
    assert not list((server.runs_dir).glob("*/config.yaml")), "an invalid form must not start anything"

    config = dict(dataset=["identity"], max_steps=60, logging_steps=1, cutoff_len=128, batch_size=4, learning_rate=1e-2,
                  precision="fp32", report_to=[], save_steps=30)
    yaml_text, command, error, _ = client.predict("en", str(tiny_model_dir), *form_values(**config), api_name="/check_form")
    assert error == "" and f"model={tiny_model_dir}" in command and "max_steps: 60" in yaml_text
    _, info, highlighted, _, pictures = client.predict("en", str(tiny_model_dir), *form_values(**config), api_name="/preview")
    assert "chatml" in info and not pictures["visible"] and not pictures["value"]  # text rows: no pictures shown
    trained = [piece["token"] for piece in highlighted["value"] if piece["class_or_confidence"]]
    assert trained and all(t.endswith("<|im_end|>") for t in trained)

    error, status = client.predict("en", [], str(tiny_model_dir), *form_values(**config), api_name="/start")
    assert error == "" and "Started" in status
    seen_steps: list[int] = []
    lags: list[float] = []
    deadline = time.time() + 300
    headline = ""
    while time.time() < deadline:
        result = client.predict(0.6, "en", api_name="/watch")
        received = time.time()
        headline = result[0] if isinstance(result[0], str) else headline
        drawn = re.search(r'data-series="loss" data-count="(\d+)" data-last-step="(\d+)"', result[2] if isinstance(result[2], str) else "")
        if drawn:
            count, last = int(drawn.group(1)), int(drawn.group(2))
            if not seen_steps or last > seen_steps[-1]:
                seen_steps.append(last)
                events = [line for line in (next(server.runs_dir.glob("*/events.jsonl"))).read_text().splitlines() if '"train"' in line]
                lags.append(received - json.loads(events[count - 1])["time"])
        if "succeeded" in headline or "failed" in headline:
            break
        time.sleep(0.3)
    assert "succeeded" in headline, headline
    assert len(seen_steps) >= 3 and seen_steps[-1] == 60, seen_steps  # the curve grew while it trained
    print(f"event -> client lag: median {sorted(lags)[len(lags) // 2]:.2f}s max {max(lags):.2f}s over {len(lags)} updates")

    table, selected, _ = client.predict("en", None, [], api_name="/runs")
    [row] = table["data"]
    run_id = row[0]
    assert row[1] == "succeeded" and row[5] == "60/60" and float(row[6]) > 0
    assert selected["value"] == run_id

    run_dir = server.runs_dir / run_id
    finished = json.loads((run_dir / "status.json").read_text())["finished_at"]
    message = client.predict("en", run_id, api_name="/resume_run")
    assert message == f"Resuming `{run_id}`"
    deadline = time.time() + 200
    while time.time() < deadline:
        status = json.loads((run_dir / "status.json").read_text())
        if status["state"] in ("succeeded", "failed") and status["finished_at"] > finished:
            break
        time.sleep(0.5)
    assert status["state"] == "succeeded" and status["global_step"] >= 60, status
    assert (run_dir / "config.yaml").read_text().count("resume: true") == 1
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    starts = [i for i, e in enumerate(events) if e["type"] == "status" and e["state"] == "running"]
    assert len(starts) == 2
    resumed = [e["step"] for e in events[starts[1]:] if e["type"] == "train"]
    assert all(step > 60 for step in resumed), resumed  # continued from checkpoint-60, not from scratch

    curves, note, *_ = client.predict("en", [run_id], 0.0, "loss", api_name="/compare")
    [(name, count)] = re.findall(r'data-series="([^"]+)" data-count="(\d+)"', curves)
    assert name == run_id and int(count) == len([e for e in events if e["type"] == "train"]) >= 60 and "two or more" in note

    updates = client.predict("zh", api_name="/set_language")  # (buttons and tabs are not API outputs: browser test)
    assert {"label": "学习率", "__type__": "update"} in updates
    assert any(u.get("value") == "删除该训练目录及其全部内容？" for u in updates if isinstance(u, dict))

    message, *_ = client.predict("en", run_id, run_id, [], api_name="/delete_run")
    assert message.startswith("Deleted") and not (server.runs_dir / run_id).exists()
