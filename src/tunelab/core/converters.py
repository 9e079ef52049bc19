"""One raw dataset row -> the canonical example of its format (see core.datasets); ValueError names the problem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.core.datafiles import Malformed
from tunelab.core.messages import check_order, parse_messages, parse_tools

if TYPE_CHECKING:
    from tunelab.core.datasets import DatasetSpec


def convert_row(record: Any, spec: "DatasetSpec") -> dict[str, Any]:
    """Convert one raw row to canonical form; raise ValueError naming the problem."""
    if isinstance(record, Malformed):
        raise ValueError(record.reason)
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    return _CONVERTERS[spec.format](record, spec)


def _require(record: dict, spec: "DatasetSpec", key: str) -> Any:
    column = spec.column(key)
    if column is None or column not in record or record[column] is None:
        raise ValueError(f"missing column {column!r}")
    return record[column]


def _optional_text(record: dict, spec: "DatasetSpec", key: str) -> str:
    column = spec.column(key)
    value = record.get(column) if column else None
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"column {column!r} must be a string, got {type(value).__name__}")
    return value


def _system(record: dict, spec: "DatasetSpec", messages: list[dict]) -> list[dict]:
    """Messages with the row's system column first (a system message already there wins, as in LLaMA-Factory)."""
    system = _optional_text(record, spec, "system")
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def _from_alpaca(record: dict, spec: "DatasetSpec") -> dict:
    instruction = _require(record, spec, "instruction")
    output = _require(record, spec, "output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise ValueError(f"columns {spec.column('instruction')!r} and {spec.column('output')!r} must be strings")
    prompt = "\n".join(p for p in (instruction, _optional_text(record, spec, "input")) if p)
    messages: list[dict[str, Any]] = []
    history = record.get(spec.column("history") or "") or []
    if not isinstance(history, list):
        raise ValueError("history must be a list of [user, assistant] pairs")
    for pair in history:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise ValueError("history must be a list of [user, assistant] pairs of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": check_order(_system(record, spec, messages))}


def _from_messages(record: dict, spec: "DatasetSpec") -> dict:
    messages = parse_messages(_require(record, spec, "messages"), spec.tags_(), f"column {spec.column('messages')!r}")
    example: dict[str, Any] = {"messages": check_order(_system(record, spec, messages))}
    tools_column = spec.column("tools")
    tools = parse_tools(record.get(tools_column), f"column {tools_column!r}") if tools_column else None
    if tools:
        example["tools"] = tools
    return example


def _from_text(record: dict, spec: "DatasetSpec") -> dict:
    text = _require(record, spec, "text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"column {spec.column('text')!r} is empty or not a string")
    return {"text": text}


def _prompt_messages(record: dict, spec: "DatasetSpec") -> list[dict[str, Any]]:
    """The prompt of a preference/kto/prompt row: a string (plus the query column), or messages."""
    prompt = _require(record, spec, "prompt")
    if isinstance(prompt, str):
        text = "\n".join(p for p in (prompt, _optional_text(record, spec, "query")) if p)
        if not text.strip():
            raise ValueError(f"column {spec.column('prompt')!r} is empty")
        messages = [{"role": "user", "content": text}]
    elif isinstance(prompt, list):
        messages = parse_messages(prompt, spec.tags_(), f"column {spec.column('prompt')!r}")
    else:
        raise ValueError(f"column {spec.column('prompt')!r} must be a string or a non-empty list of messages")
    return _system(record, spec, messages)


def _reply(record: dict, spec: "DatasetSpec", key: str) -> str:
    value = _require(record, spec, key)
    if isinstance(value, dict):  # a ShareGPT/OpenAI message: {"from": "gpt", "value": ...}
        value = [value]
    if isinstance(value, list):
        messages = parse_messages(value, spec.tags_(), f"{key!r} reply")
        if len(messages) != 1 or messages[0]["role"] != "assistant" or messages[0].get("tool_calls"):
            raise ValueError(f"{key!r} must be one assistant reply of text")
        value = messages[0]["content"]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} response is empty or not a string")
    return value


def _from_preference(record: dict, spec: "DatasetSpec") -> dict:
    messages = check_order(_prompt_messages(record, spec), ends_with="user")
    chosen, rejected = _reply(record, spec, "chosen"), _reply(record, spec, "rejected")
    return {"messages": messages, "chosen": chosen, "rejected": rejected}


_LABELS = {True: True, False: False, "true": True, "false": False, "1": True, "0": False}


def _from_kto(record: dict, spec: "DatasetSpec") -> dict:
    conversation = spec.column("messages")
    if spec.column("prompt") not in record and conversation in record:
        *prompt, last = parse_messages(record[conversation], spec.tags_(), f"column {conversation!r}")
        if last["role"] != "assistant" or last.get("tool_calls"):
            raise ValueError(f"column {conversation!r} must end with the assistant reply that the label judges")
        messages, completion = _system(record, spec, prompt), last["content"]
        if not completion.strip():
            raise ValueError("'completion' response is empty")
    else:
        messages, completion = _prompt_messages(record, spec), _reply(record, spec, "completion")
    label = _require(record, spec, "label")
    key = label.strip().lower() if isinstance(label, str) else label
    if isinstance(key, float) and key in (0.0, 1.0):
        key = int(key)
    if isinstance(key, (list, dict)) or key not in _LABELS:
        raise ValueError(f"label {label!r} is not a boolean (true: desirable, false: undesirable)")
    check_order(messages, ends_with="user")
    return {"messages": messages, "completion": completion, "label": _LABELS[key]}


def _from_prompt(record: dict, spec: "DatasetSpec") -> dict:
    messages = check_order(_prompt_messages(record, spec), ends_with="user")
    used = {spec.column("prompt"), spec.column("system"), spec.column("query")}
    return {"messages": messages, "extra": {k: v for k, v in record.items() if k not in used}}


_CONVERTERS = {
    "alpaca": _from_alpaca,
    "sharegpt": _from_messages,
    "openai": _from_messages,
    "text": _from_text,
    "preference": _from_preference,
    "kto": _from_kto,
    "prompt": _from_prompt,
}
