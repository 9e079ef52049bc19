"""Format and column-mapping guessing on files written here (JSON, JSONL, CSV, Parquet): the guess names the format
and the columns it mapped, and reading the file that way yields valid examples."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tunelab.core.dataguess import guess_file
from tunelab.core.datasets import load_dataset_registry, validate_file

TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
SHAREGPT = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
# rows, expected format, expected column mapping (keys whose names differ from the format's defaults)
CASES = {
    "alpaca": ([{"instruction": "Add 2 and 3", "input": "", "output": "5"}], "alpaca", {}),
    "qa": ([{"question": "Capital of France?", "answer": "Paris"}], "alpaca", {"instruction": "question", "output": "answer"}),
    "prompt_response": ([{"prompt": "Say hi", "response": "hi", "system": "Be brief."}], "alpaca",
                        {"instruction": "prompt", "output": "response"}),
    "sharegpt": ([{"conversations": SHAREGPT, "system": "Be kind."}], "sharegpt", {}),
    "sharegpt_in_messages": ([{"messages": SHAREGPT}], "sharegpt", {"messages": "messages"}),
    "openai": ([{"messages": TURNS}], "openai", {}),
    "openai_in_conversations": ([{"conversations": TURNS}], "openai", {"messages": "conversations"}),
    "preference": ([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], "preference", {}),
    "preference_named": ([{"question": "2+2?", "accepted": "4", "rejected_response": "5"}], "preference",
                         {"chosen": "accepted", "rejected": "rejected_response", "prompt": "question"}),
    "kto": ([{"prompt": "2+2?", "completion": "4", "label": True}, {"prompt": "3+3?", "completion": "7", "label": False}],
            "kto", {}),
    "kto_messages": ([{"messages": TURNS, "label": True}], "kto", {}),
    "grpo_prompts": ([{"prompt": "2+2?", "answer": "4"}], "prompt", {}),
    "text": ([{"text": "A document."}], "text", {}),
    "text_named": ([{"document": "A document.", "id": 3}], "text", {"text": "document"}),
}
TABULAR = {"alpaca", "qa", "prompt_response", "preference", "preference_named", "grpo_prompts", "text"}


def write(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the file type of ``path``'s suffix."""
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_guess_names_format_and_columns_and_the_reading_works(tmp_path: Path, suffix: str) -> None:
    registry = load_dataset_registry()
    for case, (rows, fmt, columns) in CASES.items():
        if suffix == ".csv" and case not in TABULAR:
            continue  # nested conversations and booleans do not survive CSV
        path = write(tmp_path / f"{case}{suffix}", rows)
        guess = guess_file(path)
        assert (guess.format, guess.columns) == (fmt, columns), (case, suffix, guess)
        assert "guessed from the first row's keys" in guess.why
        for column in columns.values():
            assert f"← {column}" in guess.reason()
        report = validate_file(*registry.resolve(str(path)))
        assert not report.problems and len(report.examples) == len(rows), (case, suffix, report.problems)


def test_unknown_keys_and_non_objects_say_alpaca_was_assumed(tmp_path: Path) -> None:
    assert "no known keys" in guess_file(write(tmp_path / "odd.json", [{"foo": 1}])).why
    assert "not an object" in guess_file(write(tmp_path / "list.json", [[1, 2]])).why
