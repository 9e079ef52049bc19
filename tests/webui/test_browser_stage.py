"""A preference stage from the Train tab in a real browser (Playwright + Debian's chromium): choosing stage dpo shows
its own fields only, offers preference datasets, previews chosen vs rejected, and the live view draws the run's
DPO margin curve from its events."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.webui.test_browser import fill_held, open_page, pick
from tunelab.core.rundir import RunDir

pytestmark = pytest.mark.timeout(600)  # the browser fixture skips where chromium is not installed
MARGIN_POINTS_JS = """() => Number((document.querySelector('#metric_plot polyline[data-series="rewards/margins"]')
  || {dataset: {}}).dataset.count || 0)"""


def test_dpo_from_the_train_tab_draws_its_margin_curve(studio_server, browser, demo_model_dir: Path) -> None:
    from playwright.sync_api import expect

    server = studio_server().start()
    page = open_page(browser, server.url)
    pick(page, "model", "demo", "demo")
    expect(page.locator("#beta")).to_be_hidden()
    pick(page, "stage", "dpo", "dpo")
    expect(page.locator("#beta")).to_be_visible(timeout=10_000)
    expect(page.locator("#train_on_prompt")).to_be_hidden()
    page.locator("#dataset .remove-all").click()
    pick(page, "dataset", "helpful", "helpful_demo (preference)")
    expect(page.locator("#data_preview")).to_contain_text("rejected", timeout=15_000)
    for elem_id, value in (("max_steps", "6"), ("learning_rate", "0.002"), ("cutoff_len", "128")):
        fill_held(page, f"#{elem_id} input", value)
    page.locator("#start").click()
    expect(page.locator("#status")).to_contain_text("demo-lora-dpo", timeout=30_000)
    page.wait_for_function(f"({MARGIN_POINTS_JS})() >= 3", timeout=300_000, polling=500)
    [run_dir] = [p for p in server.runs_dir.iterdir() if (p / "config.yaml").is_file()]
    run = RunDir(run_dir)
    assert run.config().stage == "dpo" and run.config().dataset == ["helpful_demo"]
    stroke = page.locator('#metric_plot polyline[data-series="rewards/margins"]').get_attribute("stroke")
    assert stroke and stroke.startswith("#")
    drawn = page.evaluate(MARGIN_POINTS_JS)
    deadline = time.time() + 120
    while run.status().get("state") != "succeeded" and time.time() < deadline:
        time.sleep(1)
    logged = [e for e in map(json.loads, run.events_file.read_text().splitlines())
              if e["type"] == "train" and "rewards/margins" in e]
    assert 3 <= drawn <= len(logged) and run.status()["state"] == "succeeded"
