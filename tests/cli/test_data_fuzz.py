"""Malformed input never ends in a traceback: a mutation corpus thrown at every loader through `tunelab data check`,
`tunelab data add` and `tunelab train` (in-process through the CLI's main, a few through real subprocesses). Each case must exit
non-zero with a message that names the file."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import main as cli_main
from tunelab.core.datasets import DataError
from tunelab.services.data_registry import register

GOOD = {
    "alpaca": [{"instruction": "Add 2 and 3", "input": "", "output": "5"}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}],
    "openai": [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}],
    "preference": [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}],
    "kto": [{"prompt": "2+2?", "completion": "4", "label": True}],
    "prompt": [{"prompt": "2+2?", "answer": "4"}],
    "text": [{"text": "A document."}],
}


def _mutations(fmt: str, rng: random.Random) -> list[tuple[str, bytes]]:
    """(file name, bytes) cases derived from one good row of ``fmt``."""
    row = GOOD[fmt][0]
    good = json.dumps(GOOD[fmt]).encode()
    cases = [
        ("truncated.json", good[: len(good) // 2]),
        ("latin1.json", json.dumps(GOOD[fmt], ensure_ascii=False).replace("Hi", "Hé").encode("latin-1", "replace")
         + b'\xe9'),
        ("binary.json", bytes(rng.randrange(256) for _ in range(300))),
        ("binary.jsonl", b"\x00\x01\xff\xfe" * 50),
        ("binary.txt", b"\x00abc\x00" * 10),
        ("binary.parquet", b"PAR1" + bytes(rng.randrange(256) for _ in range(64))),
        ("binary.csv", b"\xff\xfe\x00a,b\n\x00"),
        ("empty.json", b""),
        ("empty.jsonl", b"\n\n"),
        ("number.json", b"42"),
        ("string.json", b'"rows"'),
        ("object.json", json.dumps({"a": row, "b": row}).encode()),
        ("null_rows.json", b"[null, 3, \"x\"]"),
        ("huge.jsonl", json.dumps({**row, "junk": "x" * 2_000_000}).encode() + b"\n{bad"),
        ("wrong.ext", good),
        ("csv_ragged.csv", b"instruction,output\nq,a,extra,more\n"),
    ]
    half = json.dumps([_half_character(row)])  # its \\ud800 escape decodes to a lone surrogate
    cases += [("surrogate.json", half.encode()), ("surrogate.jsonl", half[1:-1].encode() + b"\n")]
    for key in row:
        cases.append((f"missing_{key}.json", json.dumps([{k: v for k, v in row.items() if k != key}]).encode()))
        cases.append((f"null_{key}.json", json.dumps([{**row, key: None}]).encode()))
        cases.append((f"number_{key}.json", json.dumps([{**row, key: 7}]).encode()))
        cases.append((f"list_{key}.json", json.dumps([{**row, key: [1, {"x": None}]}]).encode()))
    if "messages" in row or "conversations" in row:
        column = "messages" if "messages" in row else "conversations"
        turns = row[column]
        cases.append(("reversed.json", json.dumps([{column: turns[::-1]}]).encode()))
        cases.append(("bad_role.json", json.dumps([{column: [{**turns[0], list(turns[0])[0]: "robot"}, turns[1]]}]).encode()))
        cases.append(("turn_not_object.json", json.dumps([{column: ["hi", "hello"]}]).encode()))
    return cases


def _half_character(row: dict) -> dict:
    """The row with half a character (a lone surrogate) before its last text value."""
    key = [k for k, v in row.items() if isinstance(v, (str, list))][-1]
    value = row[key]
    if isinstance(value, str):
        return {**row, key: "\ud800" + value}
    *turns, last = value
    text = "content" if "content" in last else "value"
    return {**row, key: [*turns, {**last, text: "\ud800" + last[text]}]}


# mutations that are legitimately valid for some formats (e.g. an alpaca row without its optional input)
ALLOWED_OK = {"missing_input.json", "null_input.json", "list_answer.json", "number_answer.json", "null_answer.json",
              "missing_answer.json"}


@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_data_check_and_add_never_traceback(fmt: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))  # `data add` writes the user's registry here
    rng = random.Random(fmt)
    for number, (name, content) in enumerate(_mutations(fmt, rng)):
        path = tmp_path / f"{fmt}_{name}"
        path.write_bytes(content)
        code = cli_main(["data", "check", str(path), "--format", fmt])  # an exception here fails the test
        err = capsys.readouterr().err
        if not (name in ALLOWED_OK and code == 0):
            assert code != 0, (fmt, name)
            assert str(path) in err, (fmt, name, err[:300])
            assert "Traceback" not in err
        try:  # `tunelab data add` / the Data tab's Save, called directly (the CLI's one-line wrapper is in test_data_verbs)
            register(f"case{number}", str(path), fmt)
        except DataError as exc:
            assert path.name in str(exc) and "\n" not in str(exc), (fmt, name, str(exc)[:300])
        else:
            assert name in ALLOWED_OK, (fmt, name)


def test_bad_registries_and_train_configs_never_traceback(tmp_path: Path, capsys) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(GOOD["alpaca"]))
    registries = {"not_json": b"{", "list": b"[1]", "entry_number": b'{"x": 3}', "latin1": b'{"x": "\xe9"}', "empty": b""}
    for name, content in registries.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "dataset_info.json").write_bytes(content)
        code = cli_main(["data", "check", "x", "--dataset-dir", str(folder)])
        err = capsys.readouterr().err
        assert code != 0 and str(folder) in err and "Traceback" not in err, (name, err)
    configs = {"bad_yaml.yaml": "model: [demo\n", "list.yaml": "- 1\n", "unknown.yaml": "modle: demo\n",
               "bad_value.yaml": "learning_rate: fast\n", "bad_data.yaml": f"dataset: [{tmp_path / 'huge.jsonl'}]\n",
               "binary.yaml": "\x00\x01\x02"}
    (tmp_path / "huge.jsonl").write_text('{"instruction": "q", "output": "a"}\n{"instruction": \n')
    for name, text in configs.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        code = cli_main(["train", str(path), "--runs-dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err, (name, err)
        assert name in err or "huge.jsonl" in err or "modle" in err or "learning_rate" in err, (name, err)
    assert not (tmp_path / "runs").exists()  # nothing started


def test_real_subprocesses_exit_cleanly(tmp_path: Path) -> None:
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x00" * 20)
    for argv in (["data", "check", str(binary)], ["train", f"dataset={binary}", "--runs-dir", str(tmp_path / "r")]):
        result = subprocess.run([sys.executable, "-m", "tunelab.cli", *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and str(binary) in result.stderr and "Traceback" not in result.stderr, result.stderr
