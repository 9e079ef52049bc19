"""How many tokens a dataset holds: measured lengths kept by `tunelab data check --model`, else a character count.

The measured lengths are cached per (file, its size and modification time, model, template) under
$TUNELAB_HOME/token-lengths/, so an edited file or another tokenizer is measured again, never reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunelab.core.files import write_atomic
from tunelab.core.paths import home_dir

CHARS_PER_TOKEN = 3.8  # English text under 100k+-vocabulary BPE tokenizers (Llama 3, Qwen2.5): 3.7-4.2
TOKENS_PER_TURN = 5  # a chat template's role markers and end-of-turn tokens around each message


def _key(file: Path, model: str, template: str) -> str:
    stat = file.stat()
    ident = json.dumps([str(file.resolve()), stat.st_size, stat.st_mtime_ns, model, template])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _cache_file(file: Path, model: str, template: str) -> Path:
    return home_dir() / "token-lengths" / f"{_key(file, model, template)}.json"


def save_lengths(file: Path, model: str, template: str, lengths: list[int]) -> None:
    """Keep the measured per-example token lengths of ``file`` (written to a temp file, then renamed)."""
    data = {"file": str(file), "model": model, "template": template, "lengths": lengths}
    write_atomic(_cache_file(file, model, template), json.dumps(data))


def load_lengths(file: Path, model: str, template: str) -> list[int] | None:
    """The lengths `tunelab data check` measured for this very file, model and template, if it did."""
    try:
        data = json.loads(_cache_file(file, model, template).read_text())
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
