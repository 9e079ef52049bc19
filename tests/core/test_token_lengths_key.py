"""Measured token lengths are kept per reading of a file: another format, column map or sample count of the same
file is measured again; a description or where the spec came from does not matter."""

from __future__ import annotations

from pathlib import Path

from tunelab.core.datasets import DatasetSpec
from tunelab.core.token_lengths import load_lengths, save_lengths


def test_lengths_are_kept_per_reading_of_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')
    spec = DatasetSpec(file=str(data), format="alpaca")
    save_lengths(data, spec, "m", "auto", [7, 9])
    assert load_lengths(data, spec, "m", "auto") == [7, 9]
    assert load_lengths(data, spec.model_copy(update={"description": "mine", "file": "d.jsonl"}), "m", "auto") == [7, 9]
    assert load_lengths(data, spec.model_copy(update={"num_samples": 1}), "m", "auto") is None
    assert load_lengths(data, spec.model_copy(update={"columns": {"prompt": "instruction"}}), "m", "auto") is None
    assert load_lengths(data, spec, "m", "chatml") is None
