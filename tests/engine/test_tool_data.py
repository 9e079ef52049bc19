"""Tool-call conversations (LLaMA-Factory function_call/observation turns + tools column) train through a template
with tool support: the call is a trained target, the tool result is not; a template without tools refuses."""

from __future__ import annotations

import json

import pytest

from tests.tiny import tiny_tokenizer
from tunelab.core.datasets import DataError, DatasetSpec
from tunelab.core.converters import convert_row
from tunelab.core.templates import registry
from tunelab.engine.tokenize import IGNORE, encode_conversations

ROW = {
    "conversations": [
        {"from": "human", "value": "Time in Oslo?"},
        {"from": "function_call", "value": '{"name": "get_time", "arguments": {"city": "Oslo"}}'},
        {"from": "observation", "value": '{"time": "10:00"}'},
        {"from": "gpt", "value": "It is ten in Oslo."},
    ],
    "tools": json.dumps([{"name": "get_time", "description": "Time in a city", "parameters": {"type": "object"}}]),
}


def test_tool_call_is_trained_and_tool_result_is_not() -> None:
    example = convert_row(ROW, DatasetSpec(file="x.json", format="sharegpt"))
    template = registry().get("qwen2_5")
    tokenizer = tiny_tokenizer(specials=["<|im_start|>", "<|im_end|>"])
    (row,) = encode_conversations(tokenizer, template, [example["messages"]], cutoff_len=4096, tools=[example["tools"]])
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE])
    prompt = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label == IGNORE])
    assert '"name": "get_time"' in trained and "It is ten in Oslo." in trained
    assert "10:00" in prompt and "Time in a city" in prompt  # the tool result and the schema are prompt, not target
    assert "10:00" not in trained


def test_template_without_tools_refuses_in_one_line() -> None:
    example = convert_row(ROW, DatasetSpec(file="x.json", format="sharegpt"))
    template = registry().get("llama2")
    with pytest.raises(DataError, match="1 example\\(s\\) use tools.*'llama2'.*e.g. "):
        encode_conversations(tiny_tokenizer(), template, [example["messages"]], cutoff_len=512, tools=[example["tools"]])
