"""The user's dataset registry ($TUNELAB_HOME/datasets): merged with the shipped one in the single lookup every
surface uses, never shadowing a shipped name, written atomically, uploads copied and cleaned up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.core.config import RunConfig
from tunelab.core.datasets import DataError, load_dataset_registry, user_registry_file, validate_file
from tunelab.core.user_datasets import add_entry, copy_upload, remove_entry, rename_entry
from tunelab.services.data_registry import register
from tunelab.services.preflight import preflight

ROWS = [{"question": "Capital of France?", "answer": "Paris"}, {"question": "2+2?", "answer": "4"}]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TUNELAB_HOME of this test's own."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_user_datasets_join_the_one_lookup(home: Path, tmp_path: Path) -> None:
    shipped = load_dataset_registry()
    upload = tmp_path / "upload" / "qa.json"
    upload.parent.mkdir()
    upload.write_text(json.dumps(ROWS))
    name, note = register("qa", str(upload), upload_name="qa.json")
    assert "instruction ← question" in note and "output ← answer" in note
    upload.unlink()  # the registry points at its own copy, not at the (temporary) upload
    merged = load_dataset_registry()
    assert set(merged.specs) == set(shipped.specs) | {"qa"} and set(merged.user) == {"qa"}
    report = validate_file(*merged.resolve("qa"))
    assert [e["messages"][-1]["content"] for e in report.examples] == ["Paris", "4"]
    assert str(home) in str(merged.resolve("qa")[2])
    preflight(RunConfig(model="demo", dataset=["qa"]))  # what `tunelab train` checks before it starts
    assert load_dataset_registry(shipped.path).specs.keys() == shipped.specs.keys()  # an explicit dataset_dir: only it
    assert not [p for p in user_registry_file().parent.iterdir() if p.name.endswith(".tmp")]


def test_shipped_names_are_never_shadowed(home: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    with pytest.raises(DataError, match="'identity' is taken by a dataset shipped with tunelab"):
        add_entry("identity", {"file": str(rows)})
    # a hand-edited user registry that reuses a shipped name: the shipped one wins and a note says so
    user_registry_file().parent.mkdir(parents=True, exist_ok=True)
    user_registry_file().write_text(json.dumps({"identity": {"file": str(rows)}, "mine": {"file": str(rows)}}))
    merged = load_dataset_registry()
    assert merged.resolve("identity")[2] != rows.resolve() and "mine" in merged.user
    assert any("'identity' is also a shipped dataset" in note for note in merged.notes)
    user_registry_file().write_text("{broken")  # a broken user registry never hides the shipped datasets
    merged = load_dataset_registry()
    assert "identity" in merged.specs and "invalid JSON" in merged.notes[0]


def test_rename_and_remove_only_your_own(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "a.jsonl"
    source.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    copy = copy_upload(source)
    add_entry("one", {"file": copy})
    add_entry("two", {"file": copy})
    with pytest.raises(DataError, match="already one of your datasets"):
        add_entry("one", {"file": copy})
    with pytest.raises(DataError, match="not valid"):
        rename_entry("one", "bad name/")
    rename_entry("one", "uno")
    assert set(load_dataset_registry().user) == {"uno", "two"}
    with pytest.raises(DataError, match="shipped with tunelab and read-only"):
        remove_entry("identity")
    with pytest.raises(DataError, match="yours: two, uno"):
        remove_entry("nope")
    stored = user_registry_file().parent / copy
    remove_entry("uno")
    assert stored.is_file()  # "two" still uses the copy
    remove_entry("two")
    assert not stored.exists() and load_dataset_registry().user == {}
