"""The dataset registry (data/dataset_info.json) and row-by-row validation into canonical examples.

Canonical forms: ``{"messages": [...]}`` for sft, ``{"text": ...}`` for pt,
``{"messages": [prompt], "chosen": str, "rejected": str}`` for paired preference stages (rm, dpo, orpo, simpo),
``{"messages": [prompt], "completion": str, "label": bool}`` for kto and ``{"messages": [prompt], "extra": {...}}``
(the row's other columns, handed to reward functions) for grpo; a prompt ends with a user turn. Bad rows are never dropped
silently: every problem is reported with the file, the row number (1-based) and what is wrong.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tunelab.core.media import convert_media_row
from tunelab.core.paths import resource_dir
from tunelab.core.stages import STAGES

Format = Literal["alpaca", "sharegpt", "openai", "text", "preference", "kto", "prompt"]
FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "openai", "text", "preference", "kto", "prompt")
STAGE_FORMATS = {name: info.formats for name, info in STAGES.items()}
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system", "history": "history"},
    "sharegpt": {"messages": "conversations", "role": "from", "content": "value", "user": "human", "assistant": "gpt", "system": "system"},
    "openai": {"messages": "messages", "role": "role", "content": "content", "user": "user", "assistant": "assistant", "system": "system"},
    "text": {"text": "text"},
    "preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    "kto": {"prompt": "prompt", "completion": "completion", "label": "label", "system": "system"},
    "prompt": {"prompt": "prompt", "system": "system"},
}
MAX_REPORTED = 20


class DatasetSpec(BaseModel):
    """One entry of dataset_info.json."""

    model_config = ConfigDict(extra="forbid")

    file: str | None = None
    hub: str | None = None
    subset: str | None = None
    split: str = "train"
    format: Format = "alpaca"
    columns: dict[str, str] = {}
    description: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        if (self.file is None) == (self.hub is None):
            raise ValueError("give exactly one of 'file' or 'hub'")
        unknown = set(self.columns) - set(DEFAULT_COLUMNS[self.format])
        if unknown:
            raise ValueError(
                f"columns: unknown keys {sorted(unknown)} for format {self.format!r}; valid: {sorted(DEFAULT_COLUMNS[self.format])}"
            )
        return self

    def column(self, key: str) -> str:
        """The file's column name for a canonical key."""
        return self.columns.get(key, DEFAULT_COLUMNS[self.format][key])


class DataError(ValueError):
    """Invalid data: the message names the file, the rows and the problems."""


@dataclass
class DatasetReport:
    """What validation found: canonical examples and per-row problems."""

    name: str
    source: str
    format: str
    rows: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def raise_if_bad(self) -> None:
        """Raise DataError listing the problems (the first MAX_REPORTED of them)."""
        if not self.problems:
            return
        shown = self.problems[:MAX_REPORTED]
        more = len(self.problems) - len(shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(f"{self.source}: {len(self.problems)} malformed row(s):\n  " + "\n  ".join(shown) + tail)


@dataclass(frozen=True)
class DatasetRegistry:
    """dataset_info.json: dataset names mapped to specs; file paths resolve relative to the registry file."""

    path: Path
    specs: dict[str, DatasetSpec]

    def resolve(self, name_or_path: str, format: str | None = None) -> tuple[str, DatasetSpec, Path | None]:
        """(name, spec, local file or None for hub datasets) for a registry name or a file path."""
        if name_or_path in self.specs:
            spec = self.specs[name_or_path]
            if format:
                spec = spec.model_copy(update={"format": format})
            local = (self.path.parent / spec.file).resolve() if spec.file else None
            return name_or_path, spec, local
        candidate = Path(name_or_path).expanduser()
        if candidate.is_file():
            spec = DatasetSpec(file=str(candidate), format=format or guess_format(candidate))
            return candidate.name, spec, candidate.resolve()
        names = ", ".join(sorted(self.specs))
        raise DataError(f"dataset {name_or_path!r}: not in {self.path} and not a file; registered: {names}")


def load_dataset_registry(path: str | Path | None = None) -> DatasetRegistry:
    """Load dataset_info.json from a folder or file (default: the shipped data/)."""
    path = Path(path) if path else resource_dir("data")
    if path.is_dir():
        path = path / "dataset_info.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no dataset registry here") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    specs = {}
    for name, entry in raw.items():
        try:
            specs[name] = DatasetSpec.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors())
            raise DataError(f"{path}: dataset {name!r}: {problems}") from None
    return DatasetRegistry(path.resolve(), specs)


def guess_format(path: Path) -> str:
    """Guess a file's format from its first row's keys."""
    for row in iter_rows(path):
        _, record = row
        if not isinstance(record, dict):
            break
        keys = set(record)
        if "label" in keys and ("completion" in keys or "messages" in keys):
            return "kto"
        if "conversations" in keys:
            return "sharegpt"
        if "messages" in keys and "chosen" not in keys:
            return "openai"
        if "chosen" in keys:
            return "preference"
        if "instruction" in keys:
            return "alpaca"
        if "text" in keys:
            return "text"
        break
    return "alpaca"


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, record) for .json, .jsonl, .csv and .parquet files; DataError on unreadable input."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} row {number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        yield from enumerate(data, 1)
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            yield from enumerate(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","), 1)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # lazily: only parquet needs it

        yield from enumerate(pq.read_table(path).to_pylist(), 1)
    elif suffix == ".txt":
        yield from ((n, {"text": t}) for n, t in enumerate(path.read_text(encoding="utf-8").split("\n\n"), 1) if t.strip())
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .csv, .tsv, .parquet or .txt")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def convert_row(record: Any, spec: DatasetSpec) -> dict[str, Any]:
    """Convert one raw row to canonical form; raise ValueError naming the problem."""
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    return _CONVERTERS[spec.format](record, spec)


def _require(record: dict, spec: DatasetSpec, key: str) -> Any:
    column = spec.column(key)
    if column not in record or record[column] is None:
        raise ValueError(f"missing column {column!r}")
    return record[column]


def _from_alpaca(record: dict, spec: DatasetSpec) -> dict:
    instruction = _require(record, spec, "instruction")
    output = _require(record, spec, "output")
    extra = record.get(spec.column("input")) or ""
    if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(extra, str):
        raise ValueError("instruction, input and output must be strings")
    messages: list[dict[str, str]] = []
    system = record.get(spec.column("system"))
    if system:
        messages.append({"role": "system", "content": str(system)})
    for pair in record.get(spec.column("history")) or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise ValueError("history must be a list of [user, assistant] pairs")
        messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
    prompt = f"{instruction}\n{extra}" if extra else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": _check_messages(messages)}


def _from_messages(record: dict, spec: DatasetSpec) -> dict:
    turns = _require(record, spec, "messages")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"column {spec.column('messages')!r} must be a non-empty list of messages")
    roles = {spec.column("user"): "user", spec.column("assistant"): "assistant", spec.column("system"): "system"}
    messages = []
    for index, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise ValueError(f"message {index} is not an object")
        tag, content = turn.get(spec.column("role")), turn.get(spec.column("content"))
        if tag not in roles:
            raise ValueError(f"message {index}: role {tag!r} is not one of {sorted(roles)}")
        if not isinstance(content, str):
            raise ValueError(f"message {index}: content must be a string")
        messages.append({"role": roles[tag], "content": content})
    if "system" in record and spec.format == "sharegpt" and record["system"]:
        messages.insert(0, {"role": "system", "content": str(record["system"])})
    return {"messages": _check_messages(messages)}


def _from_text(record: dict, spec: DatasetSpec) -> dict:
    text = _require(record, spec, "text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"column {spec.column('text')!r} is empty or not a string")
    return {"text": text}


def _prompt_messages(record: dict, spec: DatasetSpec) -> list[dict[str, str]]:
    """The prompt of a preference/kto/prompt row: a string, or messages ending with a user turn."""
    prompt = _require(record, spec, "prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"column {spec.column('prompt')!r} is empty")
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in prompt]
        for index, message in enumerate(messages, 1):
            if message["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"prompt message {index}: role {message['role']!r} is not one of system, user, assistant")
            if not isinstance(message["content"], str):
                raise ValueError(f"prompt message {index}: content must be a string")
    else:
        raise ValueError("prompt must be a string or a non-empty list of messages")
    system = record.get(spec.column("system"))
    if system:
        messages.insert(0, {"role": "system", "content": str(system)})
    return messages


def _reply(record: dict, spec: DatasetSpec, key: str) -> str:
    value = _require(record, spec, key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):  # [{"role": "assistant", ...}]
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} response is empty or not a string")
    return value


def _from_preference(record: dict, spec: DatasetSpec) -> dict:
    messages = _prompt_messages(record, spec)
    chosen, rejected = _reply(record, spec, "chosen"), _reply(record, spec, "rejected")
    _check_messages([*messages, {"role": "assistant", "content": chosen}])
    return {"messages": messages, "chosen": chosen, "rejected": rejected}


_LABELS = {True: True, False: False, "true": True, "false": False, 1: True, 0: False, "1": True, "0": False}


def _from_kto(record: dict, spec: DatasetSpec) -> dict:
    if spec.column("prompt") not in record and isinstance(record.get("messages"), list) and record["messages"]:
        *prompt, last = record["messages"]  # a whole conversation: its last assistant reply is the completion
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise ValueError("messages must end with the assistant reply that the label judges")
        record = {**record, spec.column("prompt"): prompt, spec.column("completion"): last.get("content")}
    messages = _prompt_messages(record, spec)
    completion = _reply(record, spec, "completion")
    label = _require(record, spec, "label")
    key = label.strip().lower() if isinstance(label, str) else label
    if isinstance(key, float) and key in (0.0, 1.0):
        key = int(key)
    if key not in _LABELS or isinstance(key, list):
        raise ValueError(f"label {label!r} is not a boolean (true: desirable, false: undesirable)")
    _check_messages([*messages, {"role": "assistant", "content": completion}])
    return {"messages": messages, "completion": completion, "label": _LABELS[key]}


def _from_prompt(record: dict, spec: DatasetSpec) -> dict:
    messages = _prompt_messages(record, spec)
    _check_messages([*messages, {"role": "assistant", "content": "-"}])
    used = {spec.column("prompt"), spec.column("system")}
    extra = {k: v for k, v in record.items() if k not in used}
    return {"messages": messages, "extra": extra}


def _check_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise ValueError("no user/assistant messages")
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"wrong role order: message {index + 1} is {message['role']!r}, expected {expected!r}")
        if expected == "assistant" and not message["content"].strip():
            raise ValueError(f"empty assistant response in message {index + 1}")
    if body[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant response")
    return messages


_CONVERTERS = {
    "alpaca": _from_alpaca,
    "sharegpt": _from_messages,
    "openai": _from_messages,
    "text": _from_text,
    "preference": _from_preference,
    "kto": _from_kto,
    "prompt": _from_prompt,
}


def validate_file(name: str, spec: DatasetSpec, path: Path) -> DatasetReport:
    """Read and validate every row of a local dataset file."""
    report = DatasetReport(name=name, source=str(path), format=spec.format)
    if not path.is_file():
        raise DataError(f"dataset {name!r}: file {path} does not exist")
    for number, record in iter_rows(path):
        report.rows += 1
        try:
            report.examples.append(convert_media_row(record, spec, path.parent))
        except ValueError as exc:
            report.problems.append(f"row {number}: {exc}")
    if report.rows == 0:
        report.problems.append("the file holds no rows")
    return report


def validate_records(name: str, spec: DatasetSpec, records: list[Any], source: str) -> DatasetReport:
    """Validate rows that came from elsewhere (e.g. a hub dataset)."""
    report = DatasetReport(name=name, source=source, format=spec.format, rows=len(records))
    for number, record in enumerate(records, 1):
        try:
            report.examples.append(convert_media_row(record, spec, None))
        except ValueError as exc:
            report.problems.append(f"row {number}: {exc}")
    return report


def check_stage(name: str, spec: DatasetSpec, stage: str) -> None:
    """Raise DataError when a dataset's format does not fit the training stage."""
    allowed = STAGE_FORMATS[stage]
    if spec.format not in allowed:
        raise DataError(
            f"dataset {name!r} has format {spec.format!r}, which stage {stage!r} cannot use; "
            f"{stage} needs: {', '.join(allowed)}"
        )
