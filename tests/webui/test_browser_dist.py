"""A multi-process job from the Train tab in a real browser (Playwright + Debian's chromium): strategy ddp with two
processes on the demo model (CPU, gloo), Start, both ranks seen training in the live log, Stop, the run ends
aborted with no rank process left (the launcher's process group and every rank's pid)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.webui.test_browser import fill_held, open_page, pick, wait_for_step
from tunelab.core.rundir import RunDir
from tunelab.services.runner import group_members, pid_running, rank_processes

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # torchrun and two trainer processes on 2 cores


def test_a_two_process_run_starts_from_the_train_tab_and_stop_ends_every_rank(studio_server, browser, demo_model_dir: Path) -> None:
    from playwright.sync_api import expect

    began = time.time()
    server = studio_server().start()
    page = open_page(browser, server.url)  # the form starts at the demo model on the identity data
    page.locator("#advanced button.label-wrap").first.click()
    page.get_by_role("tab", name="Several GPUs / hosts").click()
    pick(page, "strategy", "ddp", "ddp")
    fill_held(page, "#nproc_per_node input", "2")
    expect(page.locator("#form_error")).to_be_empty()
    page.locator("#start").click()
    started = time.time()
    expect(page.locator("#status")).to_contain_text("demo-lora-sft", timeout=30_000)

    wait_for_step(page, 0, timeout_s=300)  # torchrun starts two ranks; each imports torch/trl and loads the model
    stepped = time.time()
    log = page.locator("#log textarea")
    expect(log).to_have_value(re.compile(r"\[default0\]:(.|\n)*\[default1\]:|\[default1\]:(.|\n)*\[default0\]:"), timeout=30_000)
    expect(page.locator("#progress")).to_contain_text("running")
    [run_dir] = [p for p in server.runs_dir.iterdir() if (p / "config.yaml").is_file()]
    run = RunDir(run_dir)
    assert (run.config().model, run.config().strategy, run.config().nproc_per_node) == ("demo", "ddp", 2)
    ranks = rank_processes(run)
    pgid = run.status()["pgid"]
    assert len(ranks) == 2 and all(pid not in group_members(pgid) for pid in ranks), "each rank in its own session"

    page.locator("#stop").click()
    stopping = time.time()
    expect(page.locator("#status")).to_contain_text("aborted", timeout=120_000)
    print(f"studio up {server.startup_s:.0f}s, form {started - began - server.startup_s:.0f}s, Start -> first step "
          f"{stepped - started:.0f}s, Stop -> aborted {time.time() - stopping:.0f}s")
    deadline = time.time() + 30
    while (group_members(pgid) or any(map(pid_running, ranks))) and time.time() < deadline:
        time.sleep(0.2)
    assert group_members(pgid) == [] and not any(map(pid_running, ranks)), "no launcher or rank process may be left"
    status = run.status()
    assert status["state"] == "aborted" and status["world_size"] == 2, status
    assert (run.checkpoints / f"checkpoint-{status['global_step']}").is_dir(), "both ranks stopped at one step and saved"
    trained = [e for e in map(json.loads, run.events_file.read_text().splitlines()) if e["type"] == "train"]
    assert trained and trained[-1]["step"] <= status["global_step"]
