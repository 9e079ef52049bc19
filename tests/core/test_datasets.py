"""Dataset registry and validation: bad data is reported with file, row and problem, never dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.core.datasets import DataError, check_stage, load_dataset_registry, validate_file


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "check", *args], capture_output=True, text=True)


def test_shipped_datasets_are_valid() -> None:
    registry = load_dataset_registry()
    for name, spec in registry.specs.items():
        if spec.file:
            report = validate_file(*registry.resolve(name))
            assert not report.problems, (name, report.problems[:3])
            assert report.rows > 0
    assert len(validate_file(*registry.resolve("alpaca_demo")).examples) >= 1000


@pytest.mark.parametrize(
    ("rows", "fmt", "message"),
    [
        ([{"instruction": "Hi"}], "alpaca", "row 1: missing column 'output'"),
        ([{"instruction": "Hi", "output": "Yo"}, {"instruction": "Q", "output": "   "}], "alpaca", "row 2: empty assistant response"),
        ([{"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}]}], "openai", "row 1: wrong role order"),
        ([{"conversations": [{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}]}], "sharegpt", "role 'bot'"),
        ([{"messages": [{"role": "user", "content": "Q"}]}], "openai", "must end with an assistant response"),
        ([{"prompt": "Q", "chosen": "A", "rejected": ""}], "preference", "'rejected' response is empty"),
        ([{"body": "x"}], "text", "missing column 'text'"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, rows: list, fmt: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    result = _check(str(path), "--format", fmt)
    assert result.returncode == 1, result.stdout
    assert str(path) in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken\n')
    result = _check(str(path))
    assert result.returncode == 1 and "row 2: invalid JSON" in result.stderr


def test_good_file_passes_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(5)))
    result = _check(str(path))
    assert result.returncode == 0 and "5 rows" in result.stdout


def test_registry_paths_resolve_relative_to_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "rows.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    (tmp_path / "d" / "dataset_info.json").write_text(json.dumps({"mine": {"file": "rows.json"}}))
    monkeypatch.chdir(tmp_path)  # the cwd is not the registry's folder
    registry = load_dataset_registry(tmp_path / "d")
    name, spec, local = registry.resolve("mine")
    assert local == (tmp_path / "d" / "rows.json").resolve()
    with pytest.raises(DataError, match="registered: mine"):
        registry.resolve("nope")


def test_stage_needs_a_fitting_format() -> None:
    registry = load_dataset_registry()
    name, spec, _ = registry.resolve("text_demo")
    with pytest.raises(DataError, match="stage 'sft' cannot use; sft needs: alpaca, sharegpt, openai"):
        check_stage(name, spec, "sft")
