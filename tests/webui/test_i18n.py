"""The 中文 table covers every string the studio shows: every key the UI code asks for exists, and no 中文 string
is English left untranslated (the schema's help lines under the fields stay English, as the README says)."""

from __future__ import annotations

import re
from pathlib import Path

from tunelab.webui.i18n import LANGUAGES, load_translations

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = "app|tab|train|live|prep|state|col|runs|eval|export|chat|series|field|group"
LITERAL_KEY = re.compile(rf"[\"']((?:{PREFIXES})\.[a-z_0-9.]+)[\"']")
CJK = re.compile(r"[\u4e00-\u9fff]")
# names that read the same in Chinese UIs (a technique, a file format, a sampling knob)
SAME_IN_ZH = {"chat.top_p", "field.use_dora", "field.use_rslora", "train.yaml"}


def ui_sources() -> list[Path]:
    return sorted((ROOT / "webui").rglob("*.py"))


def test_every_key_the_ui_code_names_is_in_the_table() -> None:
    table = load_translations().table
    used = {key for path in ui_sources() for key in LITERAL_KEY.findall(path.read_text(encoding="utf-8"))}
    assert len(used) > 100  # the scan finds the UI's keys (it would pass vacuously if it found none)
    assert sorted(used - set(table)) == []


def test_keys_built_at_run_time_are_in_the_table() -> None:
    """Keys made from names (states, stages, columns, groups, fields, job steps) exist for every name."""
    from tunelab.webui import form, jobs_view, live
    from tunelab.webui.tabs import evaluate, runs
    from tunelab.webui.train_actions import STATES

    table = load_translations().table
    names = [f"state.{s}" for s in STATES] + [f"prep.{s}" for s in live.PREPARE_STAGES]
    names += [f"col.{c}" for c in runs.COLUMNS] + [f"eval.col.{c}" for c in evaluate.COLUMNS]
    names += [f"eval.pcol.{c}" for c in evaluate.PREDICTION_COLUMNS] + [f"group.{g}" for g in form.GROUPS]
    names += [f"field.{spec.name}" for spec in form.field_specs()] + [f"{kind}.queued" for kind in jobs_view.STARTING]
    names += list(jobs_view.STARTING.values())
    # every step the trainer and the eval/export jobs report has its words
    engine = ROOT / "src" / "tunelab" / "engine"
    trainer = (engine / "train.py").read_text()
    trainer_steps = set(re.findall(r'prepare\(writer, "(\w+)"', trainer)) | set(re.findall(r'"prepare", stage="(\w+)"', trainer))
    assert trainer_steps == set(live.PREPARE_STAGES)
    for kind, module in (("eval", "evaluate.py"), ("export", "export.py")):
        steps = set(re.findall(r'stage="(\w+)"', (engine / module).read_text()))
        assert len(steps) >= 4, kind
        names += [f"{kind}.stage.{step}" for step in steps]
    assert sorted(set(names) - set(table)) == []


def test_no_key_is_written_twice_in_a_file() -> None:
    """YAML keeps the last of two equal keys without a word: the first line would be dead text."""
    for path in sorted((ROOT / "webui" / "i18n").glob("*.yaml")):
        keys = re.findall(r"^([\w.]+):", path.read_text(encoding="utf-8"), re.M)
        assert sorted({k for k in keys if keys.count(k) > 1}) == [], path.name


def test_chinese_strings_are_chinese() -> None:
    table = load_translations().table
    assert "zh" in LANGUAGES
    english = [f"{key}: {entry['zh']!r}" for key, entry in table.items() if not CJK.search(entry["zh"]) and key not in SAME_IN_ZH]
    assert english == []
    placeholders = [key for key, entry in table.items()
                    if set(re.findall(r"\{(\w+)", entry["en"])) != set(re.findall(r"\{(\w+)", entry["zh"]))]
    assert placeholders == []  # both languages fill in the same values
