"""LLaMA-Factory dataset_info.json entries read as they are (files written here in its formats, no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.cli import main as cli_main
from tunelab.core.datasets import DataError, load_dataset_registry, validate_file

TOOLS = json.dumps([{"name": "get_time", "description": "Time in a city",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
FILES = {
    "alpaca.json": [{"instruction": "Add", "input": "2 and 3", "output": "5"}, {"instruction": "Hi", "input": "", "output": "Hello"}],
    "renamed.json": [{"q": "Capital of France?", "a": "Paris", "sys": "Be brief.", "hist": [["Hi", "Hello"]]}],
    "tool.json": [{"conversations": [
        {"from": "human", "value": "Time in Oslo?"},
        {"from": "function_call", "value": '{"name": "get_time", "arguments": {"city": "Oslo"}}'},
        {"from": "observation", "value": '{"time": "10:00"}'},
        {"from": "gpt", "value": "It is 10:00 in Oslo."}], "tools": TOOLS}],
    "dpo.json": [{"conversations": [{"from": "human", "value": "2+2?"}],
                  "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}}],
    "dpo_alpaca.json": [{"instruction": "2+2?", "input": "", "chosen": "4", "rejected": "5"}],
    "kto.json": [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "label": True},
                 {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "7"}], "label": False}],
    "typed.jsonl": [{"messages": [
        {"role": "user", "content": [{"type": "text", "value": "hi"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "reasoning", "value": "greet"}, {"type": "text", "value": "Hello!"}],
         "loss_weight": 1.0}]}],
    "c4.jsonl": [{"text": "A document."}, {"text": "Another one."}],
}
INFO = {
    "alpaca_demo": {"file_name": "alpaca.json"},
    "renamed": {"file_name": "renamed.json", "columns": {"prompt": "q", "response": "a", "system": "sys", "history": "hist"}},
    "toolcall": {"file_name": "tool.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}},
    "dpo": {"file_name": "dpo.json", "ranking": True, "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "dpo_alpaca": {"file_name": "dpo_alpaca.json", "ranking": True,
                   "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
    "kto": {"file_name": "kto.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    "typed": {"file_name": "typed.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
              "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    "wiki": {"file_name": "wiki.txt", "columns": {"prompt": "text"}},
    "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
    "hub_one": {"hf_hub_url": "someone/data", "ms_hub_url": "someone/data", "split": "test", "folder": "en"},
    "mllm": {"file_name": "mllm.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"}},
    "ms_only": {"ms_hub_url": "AI-ModelScope/x"},
    "typo": {"file_name": "alpaca.json", "colums": {}},
}


@pytest.fixture
def lf_dir(tmp_path: Path) -> Path:
    for name, rows in FILES.items():
        text = "".join(json.dumps(r) + "\n" for r in rows) if name.endswith(".jsonl") else json.dumps(rows)
        (tmp_path / name).write_text(text)
    (tmp_path / "wiki.txt").write_text("First document line.\nSecond document line.\nThird.\n")
    (tmp_path / "dataset_info.json").write_text(json.dumps(INFO))
    return tmp_path


def _examples(reg, name: str) -> list[dict]:
    report = validate_file(*reg.resolve(name))
    report.raise_if_bad()
    return report.examples


def test_entries_translate_and_validate(lf_dir: Path) -> None:
    reg = load_dataset_registry(lf_dir)
    assert set(reg.errors) == {"mllm", "ms_only", "typo"}  # the bad entries do not block the other ten
    assert "multimodal" in reg.errors["mllm"] and "ModelScope" in reg.errors["ms_only"] and "colums" in reg.errors["typo"]
    assert _examples(reg, "alpaca_demo")[0]["messages"][0] == {"role": "user", "content": "Add\n2 and 3"}
    assert [m["role"] for m in _examples(reg, "renamed")[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    tool = _examples(reg, "toolcall")[0]
    assert [m["role"] for m in tool["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert tool["messages"][1]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": {"city": "Oslo"}}
    assert tool["tools"][0]["name"] == "get_time"
    assert _examples(reg, "dpo")[0] == {"messages": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}
    assert _examples(reg, "dpo_alpaca")[0]["chosen"] == "4"
    assert [(e["completion"], e["label"]) for e in _examples(reg, "kto")] == [("4", True), ("7", False)]
    typed = _examples(reg, "typed")[0]["messages"]
    assert typed[1] == {"role": "assistant", "content": "Hello!", "reasoning_content": "greet"}
    assert [e["text"] for e in _examples(reg, "wiki")] == ["First document line.", "Second document line.", "Third."]
    assert reg.specs["c4"].format == "text" and len(_examples(reg, "c4")) == 2
    hub = reg.specs["hub_one"]
    assert (hub.hub, hub.split, hub.folder) == ("someone/data", "test", "en")
    with pytest.raises(DataError, match="mllm.*multimodal"):
        reg.resolve("mllm")


def test_data_list_names_the_broken_entries(lf_dir: Path, capsys) -> None:
    assert cli_main(["data", "list", "--dataset-dir", str(lf_dir)]) == 0
    out = capsys.readouterr().out
    assert "toolcall" in out and "sharegpt" in out
    assert "mllm" in out and "unusable" in out and "multimodal" in out


def test_meaningful_columns_are_refused_and_others_counted(tmp_path: Path) -> None:
    kto = tmp_path / "kto_as_sft.json"
    kto.write_text(json.dumps(FILES["kto.json"]))
    reg = load_dataset_registry()
    report = validate_file(*reg.resolve(str(kto), "openai"))
    assert any("'label' (2 rows) changes what is trained" in p and "kto" in p for p in report.problems)
    images = tmp_path / "img.json"
    images.write_text(json.dumps([{"instruction": "<image>What?", "output": "A cat", "images": ["a.jpg"], "id": 7}]))
    report = validate_file(*reg.resolve(str(images)))
    # images now feed vision-language sft (core/media.py): a missing picture is a row problem, not a silent drop
    assert any("a.jpg: no such file" in p for p in report.problems) and report.ignored == {"id": 1}
    with pytest.raises(DataError, match="format 'alpaca' \\(guessed from the first row's keys"):
        report.raise_if_bad()
