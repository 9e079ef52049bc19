"""`tunelab data add|list|show|rename|rm|check` on files written here: the guess is said and saved, the entry is
previewed raw and rendered, checked with a real tokenizer (duplicates, overlap, truncated and dropped rows at the
cutoff), renamed and removed; every refusal is one line naming what is wrong, exit status 1, no traceback."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import main as cli_main

LONG = " ".join(["word"] * 120)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_verbs_from_add_to_rm(home: Path, tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    rows = [{"question": "Capital of France?", "answer": "Paris"}, {"question": "2+2?", "answer": "4"},
            {"question": "2+2?", "answer": "4"}, {"question": "Say a lot.", "answer": LONG},
            {"question": LONG, "answer": "ok"}]
    data = _csv(tmp_path / "qa.csv", rows)
    (tmp_path / "val.jsonl").write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n"
                                        + json.dumps({"question": "Unseen?", "answer": "yes"}) + "\n")
    added = subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "add", "qa", str(data), "--description", "mine"],
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    assert "format alpaca" in added.stdout and "instruction ← question, output ← answer" in added.stdout
    assert json.loads((home / "datasets" / "dataset_info.json").read_text())["qa"]["columns"] == {
        "instruction": "question", "output": "answer"}
    assert cli_main(["data", "list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("qa ")]
    assert listed and "yours" in listed[0] and "mine" in listed[0]
    assert cli_main(["data", "show", "qa", "--rows", "2"]) == 0
    shown = capsys.readouterr().out
    assert '"question": "Capital of France?"' in shown and "⟦Paris<|im_end|>⟧" in shown and "⟦4<|im_end|>⟧" in shown
    assert cli_main(["data", "check", "qa", "--model", str(tiny_model_dir), "--cutoff", "64",
                     "--validation", str(tmp_path / "val.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "5 rows, format alpaca" in out and "duplicates: 1 row(s)" in out
    assert "validation val.jsonl: 1 of 2 rows also in the training data" in out
    assert "<- cutoff 64" in out and "cutoff 64: 1 row(s) truncated, 1 dropped" in out  # long answer cut, long question dropped
    assert cli_main(["data", "rename", "qa", "qa2"]) == 0 and cli_main(["data", "rm", "qa2"]) == 0
    capsys.readouterr()
    assert cli_main(["data", "list"]) == 0 and "qa" not in capsys.readouterr().out.split()


def test_refusals_are_one_line(home: Path, tmp_path: Path, capsys) -> None:
    good = _csv(tmp_path / "good.csv", [{"question": "q", "answer": "a"}])
    broken = tmp_path / "broken.csv"
    broken.write_text("question,answer\nq,a\nq2,a2,extra\n")
    binary = tmp_path / "blob.parquet"
    binary.write_bytes(b"\x00\xff" * 40)
    cases = {
        ("add", "x", str(tmp_path / "missing.json")): "missing.json: no such file or folder",
        ("add", "x", "someone/some-dataset"): "hub dataset 'someone/some-dataset' could not be read",
        ("add", "x", str(good), "--columns", "output=reply"): "output=reply names a column that",
        ("add", "x", str(good), "--columns", "output"): "'output' is not KEY=COLUMN",
        ("add", "x", str(good), "--format", "kto"): "row 1: missing column 'prompt'",
        ("add", "x", str(broken)): "broken.csv: row 2: 3 fields where the header has 2",
        ("add", "x", str(binary)): "blob.parquet: not a readable parquet file",
        ("add", "identity", str(good)): "'identity' is taken by a dataset shipped with tunelab",
        ("add", "bad/name", str(good)): "dataset name 'bad/name' is not valid",
        ("show", "nope"): "dataset 'nope': not in",
        ("rm", "identity"): "shipped with tunelab and read-only",
        ("rename", "nope", "other"): "'nope' is not one of your datasets",
        ("check", "identity", "--cutoff", "0"): "cutoff: 0 is not a positive number",
    }
    for argv, message in cases.items():
        assert cli_main(["data", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert cli_main(["data", "add", "x", str(good)]) == 0  # after all those refusals the good file still registers
    capsys.readouterr()
    assert cli_main(["data", "add", "x", str(good)]) == 1 and "already one of your datasets" in capsys.readouterr().err
    good.unlink()  # a registered file that went away: named, not a traceback
    for verb, message in (("show", "good.csv: cannot be read"), ("check", "good.csv does not exist")):
        assert cli_main(["data", verb, "x"]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
