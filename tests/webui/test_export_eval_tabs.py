"""The Export and Eval tabs, standalone in a Blocks app: driven through gradio_client and a real browser.

One click on Export writes a verified merged model that plain transformers loads; one click on Evaluate shows
base-vs-fine-tuned metrics. The UI process never imports torch (both run as job processes)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.webui.conftest import BROKEN_WORDS_JS, CHROMIUM, CHROMIUM_FLAGS, shot
from tests.webui.test_browser import fill_held
from tunelab.webui.tabs import evaluate, export


@pytest.fixture(scope="module")
def studio_app(demo_lora_run: Path, tmp_path_factory: pytest.TempPathFactory):
    import gradio as gr

    from tunelab.webui.i18n import load_translations
    from tunelab.webui.studio import Studio

    runs_dir = tmp_path_factory.mktemp("ui-runs")
    run = runs_dir / demo_lora_run.name
    shutil.copytree(demo_lora_run, run, ignore=shutil.ignore_patterns("merged", "evals", "exports"))
    studio = Studio(runs_dir=runs_dir, translations=load_translations())
    with gr.Blocks() as app:
        for module in (export, evaluate):
            with gr.Tab(studio.t(module.TITLE_KEY), elem_id=f"tab_{module.__name__.rsplit('.', 1)[-1]}"):
                module.build(studio)
    app.queue()
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", ssr_mode=False, quiet=True)
    yield url, run, studio
    app.close()


def _values(tab, **given) -> list:
    """The tab's option values in widget order: the schema defaults (as the widgets show them), some replaced."""
    specs = tab.options().specs
    return [given.get(s.name, "" if s.default is None else s.default) for s in specs]


def test_tabs_do_not_import_torch() -> None:
    code = "import sys, tunelab.webui.tabs.export, tunelab.webui.tabs.evaluate; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_run_list_ticks_keep_a_typed_run_path(tmp_path: Path) -> None:
    """As runs finish or go, the run dropdown keeps a path typed into it; only a listed run that went (or no choice)
    falls back to the newest run."""
    import gradio as gr

    from tunelab.webui.jobs_view import run_choices_update

    def finished(folder: Path) -> str:
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_config.json").write_text("{}")
        (folder / "config.yaml").write_text("model: demo\n")
        return str(folder)

    runs = tmp_path / "runs"
    older, newer = finished(runs / "20250101-000000-a"), finished(runs / "20250102-000000-b")
    typed = finished(tmp_path / "elsewhere" / "20250103-000000-c")  # a run outside the studio's runs folder
    update, seen = run_choices_update(runs, typed, None)
    assert update["value"] == typed
    later = finished(runs / "20250104-000000-d")  # a run finished: the list changes
    update, seen = run_choices_update(runs, typed, seen)
    assert update["value"] == typed and [path for _, path in update["choices"]] == [later, newer, older]
    shutil.rmtree(newer)  # a listed run deleted while picked: the newest run left
    update, seen = run_choices_update(runs, newer, seen)
    assert update["value"] == later
    assert run_choices_update(runs, later, seen) == (gr.skip(), gr.skip())  # nothing changed
    shutil.rmtree(later)
    assert run_choices_update(runs, None, seen)[0]["value"] == older
    assert run_choices_update(runs, str(runs / "gone-before-the-first-tick"), None)[0]["value"] == older


def test_export_tab_one_click_writes_a_verified_model(studio_app) -> None:
    from gradio_client import Client
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url, run, _ = studio_app
    client = Client(url, verbose=False)
    status = client.predict(str(run), *_values(export), api_name="/export")
    assert "Verified" in status and "greedy tokens match" in status, status
    out = run / "merged"
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]
    assert (out / "Modelfile").is_file() and (out / "chat_template.jinja").is_file()
    report = json.loads((out / "tunelab_export.json").read_text())
    assert report["verify"]["passed"]
    # a job folder records it, like a run directory
    job = next((run / "exports").iterdir())
    assert json.loads((job / "status.json").read_text())["state"] == "succeeded"


def test_eval_tab_shows_base_vs_finetuned(studio_app) -> None:
    from gradio_client import Client

    url, run, _ = studio_app
    client = Client(url, verbose=False)
    status, table, predictions = client.predict(str(run), *_values(evaluate, metrics=["loss", "predict"], max_samples=5),
                                                api_name="/evaluate")
    assert "Evaluation finished" in status, status
    headers, rows = table["headers"], table["data"]
    assert headers[:4] == ["metric", "base", "fine-tuned", "delta"]
    loss = next(r for r in rows if r[0] == "loss")
    assert float(loss[2]) < float(loss[1]) and loss[3].startswith("-") and "▲" in loss[3]  # lower loss is better
    assert {"bleu4", "rougeL"} <= {r[0] for r in rows}
    headers, cells = prediction_cells(predictions)
    assert headers == ["prompt", "reference", "base", "fine-tuned"] and len(cells) == 5
    assert all("Tuna" in row[1] for row in cells)  # references are the identity replies
    # prompts are the conversation (role, then text), never the template's tokens
    assert all(row[0].startswith('<div class="tl-turn" data-role="user"><b>user</b> ') for row in cells)
    assert "im_start" not in predictions and "&lt;|" not in predictions
    latest_status, latest_table, latest_predictions = client.predict(str(run), api_name="/eval_latest")
    assert "Latest evaluation" in latest_status and latest_table["data"] == rows
    assert latest_predictions == predictions
    bad_status, _, _ = client.predict(str(run), *_values(evaluate, metrics=["bench"]), api_name="/evaluate")
    assert "needs at least one lm-eval task" in bad_status


def prediction_cells(table: str) -> tuple[list[str], list[list[str]]]:
    """The headers and the cells of each row of the predictions table (HTML)."""
    headers = re.findall(r"<th\s[^>]*>(.*?)</th>", table)
    body = table[table.index("<tbody>"):]
    return headers, [re.findall(r"<td\s[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_export_tab_refuses_a_quantized_run_until_asked(studio_app) -> None:
    from gradio_client import Client

    from tunelab.core.config import dump_config, load_config

    url, run, _ = studio_app
    qlora = run.parent / "qlora-copy"
    shutil.copytree(run / "adapter", qlora / "adapter")
    shutil.copy(run / "status.json", qlora / "status.json")
    config = load_config(run / "config.yaml").model_copy(update={"method": "qlora", "quantization": "4bit"})
    (qlora / "config.yaml").write_text(dump_config(config))
    status = Client(url, verbose=False).predict(str(qlora), *_values(export), api_name="/export")
    assert "4bit quantized base" in status and "Reload the base unquantized" in status
    assert not (qlora / "merged").exists() and not (qlora / "exports").exists()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_export_and_eval_in_a_real_browser(studio_app) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, run, _ = studio_app
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.get_by_role("tab", name="Export").click()
        expect(page.locator("#export_run input")).to_have_value(f"{run.name} (succeeded)")
        later = run.parent / "20991231-000000-finished-later"  # a run that finished after the page loaded
        shutil.copytree(run / "adapter", later / "adapter")
        shutil.copy(run / "config.yaml", later / "config.yaml")
        shutil.copy(run / "status.json", later / "status.json")
        page.locator("#export_run input").click()
        page.get_by_role("option", name=f"{later.name} (succeeded)").click()
        expect(page.locator("#export_run input")).to_have_value(f"{later.name} (succeeded)")
        shutil.rmtree(later)  # deleted while the page shows it: the list follows (the newest run left), no click needed
        expect(page.locator("#export_run input")).not_to_have_value(f"{later.name} (succeeded)", timeout=15_000)
        page.locator("#export_run input").click()
        page.get_by_role("option", name=f"{run.name} (succeeded)").click()
        expect(page.locator("#export_run input")).to_have_value(f"{run.name} (succeeded)")
        fill_held(page, "#export_out textarea, #export_out input", str(run / "merged-browser"))
        page.locator("#export_button").click()
        expect(page.locator("#export_status")).to_contain_text("Verified", timeout=300_000)
        assert (run / "merged-browser" / "model.safetensors").is_file()
        shot(page, "export")
        page.get_by_role("tab", name="Evaluate").click()
        fill_held(page, "#eval_max_samples input", "4")
        page.locator("#eval_metrics").get_by_label("predict").check()  # predictions too: shown as chat below
        page.locator("#eval_button").click()
        expect(page.locator("#eval_status")).to_contain_text("⏳", timeout=60_000)  # its current step
        page.reload()  # the evaluation goes on; the reloaded page finds it and shows its progress
        page.get_by_role("tab", name="Evaluate").click()
        expect(page.locator("#eval_status")).to_contain_text("-eval-", timeout=30_000)
        if "Evaluation finished" not in page.locator("#eval_status").inner_text():
            expect(page.locator("#eval_status")).to_contain_text("⏳")
        expect(page.locator("#eval_status")).to_contain_text("Evaluation finished", timeout=300_000)
        expect(page.locator("#eval_results")).to_contain_text("perplexity")
        page.get_by_text("Predictions: base vs fine-tuned replies").click()
        expect(page.locator("#eval_predictions .tl-turn").first).to_contain_text("user")
        assert page.evaluate(BROKEN_WORDS_JS, "#eval_results, #eval_predictions") == []
        right = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll('#eval_predictions th')).map(t => t.getBoundingClientRect().right))")
        assert 0 < right <= 1280, right  # prompt, reference, base and fine-tuned side by side, all on screen
        page.locator("#eval_predictions").scroll_into_view_if_needed()
        shot(page, "evaluate")
        browser.close()
