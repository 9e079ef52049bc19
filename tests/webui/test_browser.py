"""The studio in a real browser (Playwright driving Debian's /usr/bin/chromium) over a real `tunelab webui`
process on a fresh cache: refuse a bad number, pick the demo model and a dataset, start a run and time the first loss
point (with the trainer's stage shown meanwhile), start a second one (queued, said so) and stop it, watch the curve
grow, close the page, reopen it, restart the studio, find the run still training, stop it and see it aborted with no
trainer process left; then switch to 中文 and back, every string and status line following.

Screenshots of each tab go to $TUNELAB_SCREENSHOTS (``make screenshots`` points it at docs/screenshots).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.webui.conftest import BROKEN_WORDS_JS, CHROMIUM, CHROMIUM_FLAGS, shot
from tunelab.core.rundir import RunDir
from tunelab.services.runner import group_alive, group_members

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="needs Debian's chromium (apt-get install -y chromium)"),
]

FIRST_CURVE_S = 90  # issue #16: Start -> first loss point on the page, 2 cores (measured 26-28 s on a loaded machine)
# the English phrases of the strings table that the page shows (none may show while it is in 中文)
# (visible text only, without the schema's help lines under the fields, which stay English)
ENGLISH_JS = """(phrases) => { const parts = []; const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const e = n.parentElement; if (e && !e.closest('.info-text') && e.offsetParent !== null) parts.push(n.data); }
  const text = parts.join('\\n'); return phrases.filter(p => text.includes(p)); }"""
MAX_STEP_JS = """() => Number((document.querySelector('#loss_plot polyline[data-series="loss"]') || {dataset: {}}).dataset.lastStep || 0)"""
# every drawn line of a chart: [stroke colour, series name, point count]
LINES_JS = """(id) => Array.from(document.querySelectorAll('#' + id + ' polyline')).map(p => [p.getAttribute('stroke'), p.dataset.series,
  p.getAttribute('points').trim().split(/\\s+/).length])"""


def max_plotted_step(page) -> int:
    """The highest step drawn on the loss curve (raw loss series)."""
    return page.evaluate(MAX_STEP_JS)


def wait_for_step(page, above: int, timeout_s: float) -> int:
    """Wait until the curve shows a step beyond ``above``; return it."""
    page.wait_for_function(f"({MAX_STEP_JS})() > {above}", timeout=timeout_s * 1000, polling=250)
    return max_plotted_step(page)


def event_time(run: RunDir, step: int) -> float:
    """When the trainer wrote the train event of ``step``."""
    for line in run.events_file.read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "train" and event["step"] == step:
            return event["time"]
    raise AssertionError(f"no train event for step {step}")


def pick(page, elem_id: str, text: str, option: str) -> None:
    """Choose ``option`` in a Gradio dropdown by typing ``text`` into it."""
    box = page.locator(f"#{elem_id} input[role=combobox]")
    box.click()
    box.fill(text)
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def fill_held(page, selector: str, value: str, key: str = "Tab") -> None:
    """Type ``value`` into an input, press ``key`` and wait until the input still holds it: Gradio renders a component
    again just after its accordion or tab opens, and a value typed in those first moments is lost (measured: 7 of 20
    fills right after opening the chat's Sampling accordion; stop 19's CI sampled at the default temperature)."""
    box = page.locator(selector).first
    for _ in range(5):
        box.fill(value)
        box.press(key)
        page.wait_for_timeout(300)
        if box.input_value() == value:
            return
    raise AssertionError(f"{selector} shows {box.input_value()!r}, not {value!r}")


def set_slider(page, elem_id: str, value: str) -> None:
    """Type ``value`` into a Gradio slider's number box (fill_held) and check that the slider itself holds it."""
    from playwright.sync_api import expect

    fill_held(page, f"#{elem_id} input[type=number]", value, key="Enter")
    expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(value, timeout=5_000)


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.wait_for_selector("#start", timeout=60_000)
    return page


def english_phrases() -> list[str]:
    """The table's English strings of two words or more that differ in 中文 (no placeholders)."""
    from tunelab.webui.i18n import load_translations

    table = load_translations().table
    return sorted({e["en"] for e in table.values() if " " in e["en"] and "{" not in e["en"] and e["en"] != e["zh"]})


def test_a_run_survives_closed_pages_and_a_restarted_studio(studio_server, demo_model_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    home = tmp_path / "home"  # a fresh cache: the demo model alone, as `make webui` leaves it
    (home / "models").mkdir(parents=True)
    (home / "models" / demo_model_dir.name).symlink_to(demo_model_dir)
    server = studio_server(home=home).start()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = open_page(browser, server.url)
        pick(page, "model", "demo", "demo")
        page.locator("#dataset .remove-all").click()
        pick(page, "dataset", "identity", "identity (alpaca)")
        fill_held(page, "#learning_rate input", "abc")  # refused next to the field, never replaced by the default
        expect(page.locator("#learning_rate .tl-field-error")).to_contain_text("'abc' is not a number", timeout=10_000)
        page.locator("#start").click()
        expect(page.locator("#form_error")).to_contain_text("learning_rate", timeout=10_000)
        time.sleep(1)
        assert not list(server.runs_dir.glob("*/config.yaml")), "a form with a bad number must not start anything"
        for elem_id, value in (("max_steps", "5000"), ("learning_rate", "0.003")):
            fill_held(page, f"#{elem_id} input", value)
        expect(page.locator("#learning_rate .tl-field-error")).to_have_count(0, timeout=10_000)
        expect(page.locator("#template_info")).to_contain_text("chatml", timeout=30_000)
        expect(page.locator("#data_preview")).to_contain_text("<|im_start|>assistant", timeout=30_000)
        page.get_by_role("button", name=re.compile("^Config")).click()
        expect(page.locator("#config_command")).to_contain_text("max_steps=5000", timeout=10_000)
        page.locator("#start").click()
        clicked = time.time()
        expect(page.locator("#progress")).to_contain_text("preparing: ", timeout=30_000)  # the stage, never an empty box
        expect(page.locator("#status")).to_contain_text("demo-lora-sft", timeout=30_000)

        first = wait_for_step(page, 0, timeout_s=240)  # the trainer imports torch/trl and tokenizes first
        first_curve_s = time.time() - clicked
        print(f"first curve: the first loss point {first_curve_s:.1f} s after Start (fresh cache)")
        assert first_curve_s < FIRST_CURVE_S
        [run_dir] = [p for p in server.runs_dir.iterdir() if (p / "config.yaml").is_file()]
        run = RunDir(run_dir)
        assert (home / "cache" / "tokenized").is_dir()  # tokenized here, not found in another test's cache
        lags = []
        more = first
        for _ in range(3):
            more = wait_for_step(page, more, timeout_s=60)
            lags.append(time.time() - event_time(run, more))
        print(f"event -> page lag over {len(lags)} updates: {', '.join(f'{lag:.2f}s' for lag in lags)}")
        assert sorted(lags)[1] < 2.0, lags  # about a second: a 0.5 s timer, incremental read, Vega redraw
        pgid = run.status()["pgid"]
        assert run.config().model == "demo" and run.config().dataset == ["identity"]
        assert run.config().max_steps == 5000 and run.config().learning_rate == 0.003

        page.locator("#start").click()  # the same form again: queued behind the first run, and the page says so
        expect(page.locator("#train_message")).to_contain_text("Queued", timeout=30_000)
        expect(page.locator("#train_message")).to_contain_text(run.run_id)
        page.locator("#stop").click()  # stops what the page shows: the queued one
        expect(page.locator("#train_message")).to_contain_text("removed from the queue", timeout=30_000)
        assert run.status()["state"] == "running"

        page.close()  # closing the page changes nothing
        time.sleep(2)
        assert group_alive(pgid) and run.status()["state"] == "running"
        page = open_page(browser, server.url)
        expect(page.locator("#status")).to_contain_text(run.run_id, timeout=30_000)
        again = wait_for_step(page, more, timeout_s=60)
        page.close()

        server.stop()  # restart the studio: the trainer is not its child any more
        assert group_alive(pgid), "stopping the studio must not stop the training"
        server.start()
        page = open_page(browser, server.url)
        expect(page.locator("#status")).to_contain_text(run.run_id, timeout=30_000)
        expect(page.locator("#progress")).to_contain_text("running")
        latest = wait_for_step(page, again, timeout_s=60)
        assert latest > again
        lines = page.evaluate(LINES_JS, "loss_plot")
        assert [name for _, name, _ in lines][:2] == ["loss", "loss (smoothed)"] and all(c.startswith("#") for c, _, _ in lines)
        assert page.locator("#loss_plot").bounding_box()["y"] < 800, "the loss chart sits beside the form, in view"
        shot(page, "train")
        page.locator("#loss_plot").scroll_into_view_if_needed()
        time.sleep(1)
        shot(page, "train-live")

        page.get_by_role("tab", name="Runs").click()
        table = page.locator("#runs_table")
        expect(table).to_contain_text(run.run_id, timeout=15_000)
        expect(table).to_contain_text("running")
        expect(table).to_contain_text("preparation")  # preparation is shown apart from the training time
        assert page.evaluate(BROKEN_WORDS_JS, "#runs_table") == []  # headers never break a word
        pick(page, "runs_compare", run.run_id[:15], run.run_id)
        page.wait_for_function(f"({LINES_JS})('compare_plot').length == 1")
        [(stroke, name, count)] = page.evaluate(LINES_JS, "compare_plot")
        trained = [json.loads(line) for line in run.events_file.read_text().splitlines() if '"train"' in line]
        assert stroke.startswith("#") and name == run.run_id and 3 < count <= len(trained)
        expect(page.locator("#compare_plot .tl-legend")).to_contain_text(run.run_id)
        shot(page, "runs")
        page.get_by_role("tab", name="Train").click()

        page.locator("#stop").click()
        expect(page.locator("#status")).to_contain_text("aborted", timeout=120_000)
        expect(page.locator("#progress")).to_contain_text("aborted")
        deadline = time.time() + 30
        while group_members(pgid) and time.time() < deadline:
            time.sleep(0.2)
        assert group_members(pgid) == [], "no trainer process may be left"
        status = run.status()
        assert status["state"] == "aborted" and "SIGTERM" in status.get("message", "")
        assert run.final_weights() is not None and run.last_checkpoint() is not None  # saved on the way out
        events = [json.loads(line) for line in run.events_file.read_text().splitlines()]
        assert events[-1]["type"] == "status" and events[-1]["state"] == "aborted"

        page.evaluate("window.__kept = 'same page'")
        page.locator("#language label", has_text="中文").click()
        expect(page.locator("#start")).to_have_text("开始", timeout=30_000)
        expect(page.locator("#tabs button[role=tab]").first).to_have_text("训练")
        expect(page.locator("#status")).to_contain_text("已中止")
        expect(page.locator("#app_title")).to_have_text("tunelab 微调工作室")
        assert page.evaluate("window.__kept") == "same page"  # switched without a reload
        assert page.evaluate(ENGLISH_JS, english_phrases()) == []
        page.get_by_role("tab", name="对话").click()
        expect(page.locator("#chat_status")).to_contain_text("尚未加载模型", timeout=30_000)
        assert page.evaluate(ENGLISH_JS, english_phrases()) == []
        page.locator("#language label", has_text="English").click()  # and back: every string, status lines too
        expect(page.locator("#chat_status")).to_contain_text("No model loaded", timeout=30_000)
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#start")).to_have_text("Start", timeout=30_000)
        expect(page.locator("#status")).to_contain_text("aborted")
        expect(page.locator("#progress")).to_contain_text("aborted")
        assert page.evaluate("window.__kept") == "same page"
        browser.close()
    assert not server.imported_torch()
