"""Images through the whole studio in a real browser (Playwright + Debian's chromium): pick the demo VLM, the image
dataset and LoRA in the Train tab (the preview shows the pictures beside the text), train a few steps, chat with an
uploaded picture in the Chat tab (base and fine-tuned side by side, the same picture for both; the tuned answer equals
transformers + peft on that picture), and export a merged model that verifies on an image prompt."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import VLM_PICTURE, VLM_QUESTION
from tests.webui.test_browser import fill_held, open_page, pick, set_slider
from tunelab.core.rundir import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the browser fixture skips where chromium is not installed
MAX_NEW = 8


def _train(page, server) -> RunDir:
    from playwright.sync_api import expect

    pick(page, "model", "demo-vlm", "demo-vlm")
    page.locator("#dataset .remove-all").click()
    pick(page, "dataset", "vlm_demo", "vlm_demo (openai)")
    expect(page.locator("#preview_images img").first).to_be_visible(timeout=60_000)  # thumbnails beside the text
    expect(page.locator("#data_preview")).to_contain_text("<image>")
    for elem_id, value in (("max_steps", "3"), ("learning_rate", "0.002"), ("cutoff_len", "64")):
        fill_held(page, f"#{elem_id} input", value)
    page.locator("#start").click()
    deadline = time.time() + 400
    while time.time() < deadline:
        runs = [RunDir(p) for p in server.runs_dir.iterdir() if (p / "config.yaml").is_file()]
        if runs and runs[0].status().get("state") in ("succeeded", "failed"):
            break
        time.sleep(1)
    [run] = runs
    assert run.status()["state"] == "succeeded", (run.path / "train.log").read_text()[-3000:]
    assert run.config().model == "demo-vlm" and run.config().method == "lora"
    return run


def _chat(page, run: RunDir, expected: dict[str, str]) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat_refresh").click()
    pick(page, "chat_adapter", run.run_id, run.run_id)
    expect(page.locator("#chat_model input[role=combobox]")).to_have_value("demo-vlm", timeout=10_000)
    page.locator("#chat_load").click()
    expect(page.locator("#chat_status")).to_contain_text(f"Serving: demo-vlm, {run.run_id}", timeout=240_000)
    page.locator("#chat_sampling").get_by_text("Sampling").click()
    for elem_id, value in (("chat_temperature", "0"), ("chat_max_new_tokens", str(MAX_NEW))):
        set_slider(page, elem_id, value)
    page.locator("#chat_compare input").check()
    page.locator("#chat_image input[type=file]").set_input_files(str(VLM_PICTURE))
    expect(page.locator("#chat_image img")).to_be_visible(timeout=30_000)
    page.locator("#chat_input textarea").fill(VLM_QUESTION)
    page.locator("#chat_send").click()
    expect(page.locator("#chat_status")).to_contain_text("demo-vlm:", timeout=180_000)  # both answers finished
    expect(page.locator("#chat_status")).to_contain_text(f"{run.run_id}:")
    expect(page.locator("#chat_image img")).to_have_count(0, timeout=10_000)  # the picture went with the message
    expect(page.locator("#chat_temperature input[type=range]")).to_have_value("0")  # greedy still: answers comparable
    for side, name in (("#chat_output", "tuned"), ("#chat_output_base", "base")):
        expect(page.locator(f"{side} img").first).to_be_visible(timeout=10_000)  # the user's turn shows the picture
        expect(page.locator(side)).to_contain_text(VLM_QUESTION)
        expect(page.locator(side)).to_contain_text(expected[name])  # what transformers (+ peft) answer to it


def _reference(run: RunDir) -> dict[str, str]:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from tunelab.core.template_choice import choose_template
    from tunelab.engine.vlm import generate_reply, load_processor
    from tunelab.engine.vlm_demo import demo_vlm_dir

    path = demo_vlm_dir()
    processor, choice = load_processor(str(path)), choose_template("auto", "demo-vlm", path)
    messages = [{"role": "user", "content": f"<image>{VLM_QUESTION}"}]
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    base = generate_reply(model, processor, choice, messages, [str(VLM_PICTURE)], max_new_tokens=MAX_NEW)
    tuned = PeftModel.from_pretrained(model, str(run.adapter_dir)).eval()
    return {"base": base, "tuned": generate_reply(tuned, processor, choice, messages, [str(VLM_PICTURE)], max_new_tokens=MAX_NEW)}


def test_train_chat_with_a_picture_and_export_a_vlm(studio_server, browser, demo_vlm_dir: Path) -> None:
    from playwright.sync_api import expect

    server = studio_server().start()
    page = open_page(browser, server.url)
    run = _train(page, server)
    expected = _reference(run)
    assert expected["tuned"] and expected["base"], expected
    _chat(page, run, expected)
    page.locator("#chat_unload").click()
    page.get_by_role("tab", name="Export").click()
    page.locator("#export_refresh").click()
    page.locator("#export_button").click()
    expect(page.locator("#export_status")).to_contain_text("✅", timeout=300_000)
    expect(page.locator("#export_status")).to_contain_text("on a prompt with a picture")
    assert (run.path / "merged" / "processor_config.json").is_file()  # the processor came along
