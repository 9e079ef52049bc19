"""How many tokens a dataset holds: measured lengths kept by `tunelab data check --model`, else a character count.

The measured lengths are cached per (file, its size and modification time, how it is read, model, template) under
$TUNELAB_HOME/token-lengths/, so an edited file, another reading of it (format, columns, num_samples...) or another
tokenizer is measured again, never reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunelab.core.datasets import DatasetSpec
from tunelab.core.files import write_atomic
from tunelab.core.paths import home_dir

CHARS_PER_TOKEN = 3.8  # English text under 100k+-vocabulary BPE tokenizers (Llama 3, Qwen2.5): 3.7-4.2
TOKENS_PER_TURN = 5  # a chat template's role markers and end-of-turn tokens around each message


READING = ("format", "columns", "tags", "num_samples", "text_split")  # the spec fields that change the examples


def _cache_file(file: Path, spec: DatasetSpec, model: str, template: str) -> Path:
    stat = file.stat()
    reading = spec.model_dump(include=set(READING))
    ident = json.dumps([str(file.resolve()), stat.st_size, stat.st_mtime_ns, reading, model, template], sort_keys=True)
    return home_dir() / "token-lengths" / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"


def save_lengths(file: Path, spec: DatasetSpec, model: str, template: str, lengths: list[int]) -> None:
    """Keep the measured per-example token lengths of ``file`` read as ``spec`` (temp file, then renamed)."""
    data = {"file": str(file), "model": model, "template": template, "lengths": lengths}
    write_atomic(_cache_file(file, spec, model, template), json.dumps(data))


def load_lengths(file: Path, spec: DatasetSpec, model: str, template: str) -> list[int] | None:
    """The lengths `tunelab data check` measured for this very file read this way, model and template, if it did."""
    try:
        data = json.loads(_cache_file(file, spec, model, template).read_text())
    except (OSError, ValueError):
        return None
    lengths = data.get("lengths") if isinstance(data, dict) else None
    return [int(n) for n in lengths] if isinstance(lengths, list) else None


def _text_size(value: Any) -> tuple[int, int]:
    """(characters, messages) of every string inside a canonical example."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, dict):
        chars, turns = 0, int("role" in value)
        for item in value.values():
            c, t = _text_size(item)
            chars, turns = chars + c, turns + t
        return chars, turns
    if isinstance(value, list):
        sizes = [_text_size(item) for item in value]
        return sum(c for c, _ in sizes), sum(t for _, t in sizes)
    return 0, 0


def guessed_lengths(examples: list[dict[str, Any]]) -> list[int]:
    """Per-example token counts from characters (CHARS_PER_TOKEN) plus the template's tokens per message."""
    out = []
    for example in examples:
        chars, turns = _text_size(example)
        out.append(max(1, round(chars / CHARS_PER_TOKEN) + TOKENS_PER_TURN * turns))
    return out
