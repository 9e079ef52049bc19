"""The Data tab in a real browser (Playwright + Debian's chromium) over a real `tunelab webui`: upload a file, read
the guess, save it, preview it raw and rendered, check it and see the token-length histogram with its cutoff line,
then find the new dataset in the Train tab's dropdown. Plus the histogram's SVG checked against its bins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.webui.conftest import shot
from tests.webui.test_browser import fill_held, open_page
from tunelab.core.datacheck import histogram_bins
from tunelab.webui.charts import histogram_chart
from tunelab.webui.data_actions import DataActions, train_datasets
from tunelab.webui.i18n import load_translations
from tunelab.webui.studio import Studio

# whether the rendered text holding ``text`` sits on a coloured (loss-carrying) background
HIGHLIGHTED_JS = """(text) => {
  const spans = Array.from(document.querySelectorAll('#data_rendered span')).filter(s => s.textContent.includes(text)
    && !Array.from(s.children).some(c => c.textContent.includes(text)));
  return spans.some(s => { for (let e = s; e && e.id !== 'data_rendered'; e = e.parentElement) {
    const bg = getComputedStyle(e).backgroundColor; if (bg && bg !== 'rgba(0, 0, 0, 0)' && bg !== 'transparent') return true; }
    return false; });
}"""
BARS_JS = """() => Array.from(document.querySelectorAll('#data_histogram rect.tl-hist-bar'))
  .map(r => [Number(r.dataset.low), Number(r.dataset.high), Number(r.dataset.count)])"""


def test_histogram_svg_draws_every_bin_and_the_cutoff() -> None:
    lengths = [5, 7, 7, 9, 30, 31, 64]
    svg = histogram_chart(histogram_bins(lengths, 20, bins=6), 20, "lengths")
    counts = [int(c) for c in re.findall(r'class="tl-hist-bar"[^>]*data-count="(\d+)"', svg)]
    assert len(counts) in (6, 7) and sum(counts) == len(lengths)  # 7: the cutoff ends a bin
    bars = re.findall(r'class="tl-hist-bar" x="([\d.]+)"[^>]*data-low="(\d+)"', svg)
    cutoff_x = float(re.search(r'class="tl-cutoff" x1="([\d.]+)"[^>]*data-cutoff="20"', svg).group(1))
    assert all((float(x) < cutoff_x) == (int(low) <= 20) for x, low in bars)  # the line falls where 20 tokens is
    assert 'data-empty="1"' in histogram_chart([], 20, "lengths")


def test_tab_handlers_refuse_in_one_line_and_the_train_dropdown_follows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    act = DataActions(Studio(runs_dir=tmp_path, translations=load_translations()))
    broken = tmp_path / "broken.csv"
    broken.write_text("instruction,output\nq,a\nq2,a2,extra\n")
    state, guess, name, fmt, _ = act.on_upload("en", str(broken))
    assert (name, fmt) == ("broken", "alpaca") and "format **alpaca**" in guess
    assert "broken.csv: row 2: 3 fields where the header has 2" in act.on_save("en", state, "", name, fmt, "", "")[0]
    state, refusal, *_ = act.on_inspect("en", "owner/name")
    assert state is None and "hub dataset 'owner/name' could not be read" in refusal
    late = tmp_path / "late.jsonl"  # row 25 is broken: past the rows Save reads, found by Check
    late.write_text("".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n" for i in range(24)) + "{oops\n")
    assert "Saved" in act.on_save("en", None, str(late), "late", None, "", "")[0]
    report, chart = act.on_check("en", "late", "", "auto", 1024, None)  # `tunelab data check --json`, a subprocess
    assert report.startswith("❌") and "row 25: invalid JSON" in report and chart == ""
    assert "'identity' is shipped with tunelab and read-only" in act.on_rename("en", "identity", "x")[0]
    assert "Renamed" in act.on_rename("en", "late", "later")[0]
    assert ("later (alpaca)", "later") in train_datasets("sft", ["identity"])["choices"]
    assert train_datasets("sft", ["identity", "gone"])["value"] == ["identity"]
    assert "later" not in {name for _, name in train_datasets("dpo", [])["choices"]}  # dpo offers preference sets only
    assert "Deleted" in act.on_delete("en", "later")[0]
    assert "later" not in {name for _, name in train_datasets("sft", [])["choices"]}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_upload_guess_save_preview_check_then_train_offers_it(studio_server, browser, tmp_path: Path, tiny_model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect

    home = tmp_path / "home"
    monkeypatch.setenv("TUNELAB_HOME", str(home))  # the studio's registry of user datasets starts empty
    upload = tmp_path / "quiz.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}. " + "Indeed " * (i * 4)} for i in range(1, 9)]
    upload.write_text("".join(json.dumps(row) + "\n" for row in rows))
    server = studio_server().start()
    page = open_page(browser, server.url)
    page.get_by_role("tab", name="Data").click()
    page.locator("#data_upload input[type=file]").set_input_files(str(upload))
    expect(page.locator("#data_guess")).to_contain_text("instruction ← question, output ← answer", timeout=30_000)
    expect(page.locator("#data_name textarea")).to_have_value("quiz")
    expect(page.locator("#data_format input")).to_have_value("alpaca")
    page.locator("#data_save").click()
    expect(page.locator("#data_message")).to_contain_text("Saved", timeout=30_000)
    stored = json.loads((home / "datasets" / "dataset_info.json").read_text())["quiz"]
    assert stored["file"].startswith("files/") and (home / "datasets" / stored["file"]).is_file()
    expect(page.locator("#data_pick input")).to_have_value("quiz (alpaca, yours)", timeout=10_000)
    expect(page.locator("#data_raw")).to_contain_text("What is 1 plus 1?", timeout=30_000)
    expect(page.locator("#data_rendered")).to_contain_text("<|im_start|>assistant", timeout=10_000)
    assert page.evaluate(HIGHLIGHTED_JS, "2. Indeed") and not page.evaluate(HIGHLIGHTED_JS, "What is 1 plus 1?")
    fill_held(page, "#data_model textarea", str(tiny_model_dir))
    fill_held(page, "#data_cutoff input", "100")
    page.locator("#data_check").click()
    expect(page.locator("#data_report")).to_contain_text("8 rows, format alpaca", timeout=240_000)
    expect(page.locator("#data_report")).to_contain_text("cutoff 100:")
    expect(page.locator("#data_histogram line.tl-cutoff")).to_have_attribute("data-cutoff", "100")
    bars = page.evaluate(BARS_JS)  # [low, high, count] per bar
    assert sum(count for _, _, count in bars) == len(rows)
    assert {high <= 100 for _, high, count in bars if count} == {True, False}  # rows on both sides of the cutoff
    shot(page, "data-tab", page.locator("#tab_data"))
    page.get_by_role("tab", name="Train").click()
    box = page.locator("#dataset input[role=combobox]")
    box.click()
    box.fill("quiz")
    expect(page.get_by_role("option", name="quiz (alpaca)")).to_be_visible(timeout=10_000)


def test_train_dropdown_keeps_a_typed_file_path(tmp_path: Path, monkeypatch) -> None:
    """A Data tab save, rename or delete refreshes the Train tab's datasets: a file path typed there stays, a name
    that no longer exists (renamed, deleted) goes."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    typed = tmp_path / "mine.jsonl"
    typed.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    picked = ["identity", str(typed), "gone", str(tmp_path / "missing.jsonl")]
    assert train_datasets("sft", picked)["value"] == ["identity", str(typed)]


def test_save_rename_delete_keep_the_validation_choice(tmp_path: Path, monkeypatch) -> None:
    """The validation dropdown gets the new choices but keeps its pick while that dataset exists (a renamed pick
    follows the new name, a deleted one is cleared)."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    act = DataActions(Studio(runs_dir=tmp_path, translations=load_translations()))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n" for i in range(3)))
    message, pick, validation = act.on_save("en", None, str(rows), "mine", None, "", "", "identity")
    assert "Saved" in message and pick["value"] == "mine"
    assert "mine" in {name for _, name in validation["choices"]} and validation.get("value", "identity") == "identity"
    message, _, validation = act.on_save("en", None, str(rows), "other", None, "", "", "mine")
    assert "Saved" in message and validation.get("value", "mine") == "mine"
    message, _, validation = act.on_rename("en", "other", "renamed", "identity")
    assert "Renamed" in message and validation.get("value", "identity") == "identity"
    assert act.on_rename("en", "mine", "mine2", "mine")[2]["value"] == "mine2"
    message, _, validation = act.on_delete("en", "renamed", "mine2")
    assert "Deleted" in message and validation.get("value", "mine2") == "mine2"
    assert act.on_delete("en", "mine2", "mine2")[2]["value"] is None


def test_a_check_past_its_time_is_one_line(monkeypatch) -> None:
    import subprocess

    import pytest

    from tunelab.core.datasets import DataError
    from tunelab.webui import data_actions

    def too_slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], data_actions.CHECK_TIMEOUT_S)

    monkeypatch.setattr(data_actions.subprocess, "run", too_slow)
    with pytest.raises(DataError, match="took more than .* s and was stopped; run `tunelab data check identity`"):
        data_actions.run_check("identity", "demo", "auto", 1024, None)
