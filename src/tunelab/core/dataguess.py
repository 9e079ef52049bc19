"""Guessing a dataset file's format and column mapping from its first rows, with the reason said in words.

The guess looks at the column names (and, for conversations, at the keys of the first message): ``question`` /
``answer`` become alpaca's instruction / output, a ``messages`` column of ``from``/``value`` turns is sharegpt, a
``label`` next to a reply is kto. Whatever is guessed is shown to the user and can be edited before it is saved.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.datafiles import Malformed, iter_rows

SAMPLE_ROWS = 20
# canonical key -> column names that mean it, the canonical name first
SYNONYMS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "question", "query", "prompt", "input_text"),
    "input": ("input", "context"),
    "output": ("output", "response", "answer", "completion", "target"),
    "messages": ("messages", "conversations", "conversation", "chat", "dialog", "turns"),
    "chosen": ("chosen", "accepted", "preferred", "chosen_response"),
    "rejected": ("rejected", "dispreferred", "rejected_response"),
    "completion": ("completion", "response", "output", "answer"),
    "label": ("label", "kto_tag", "desirable"),
    "prompt": ("prompt", "question", "problem", "query", "instruction"),
    "text": ("text", "content", "document", "body"),
    "system": ("system", "system_prompt"),
    "tools": ("tools",),
    "history": ("history",),
}


@dataclass
class Guess:
    """A guessed format, the columns that differ from the format's defaults, and why."""

    format: str
    columns: dict[str, str] = field(default_factory=dict)
    why: str = ""
    keys: list[str] = field(default_factory=list)  # the columns seen in the first rows

    def reason(self) -> str:
        """Why this format, and which columns were mapped to other names."""
        mapped = ", ".join(f"{k} ← {v}" for k, v in self.columns.items())
        return self.why + (f"; columns mapped: {mapped}" if mapped else "")


def _find(keys: set[str], canonical: str, taken: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
    return next((name for name in SYNONYMS[canonical] if name in keys and name not in taken), None)


def _map(fmt: str, found: dict[str, str | None]) -> dict[str, str]:
    """The found columns whose names differ from the format's default names."""
    out = {}
    for key, column in found.items():
        default = "conversations" if (key, fmt) == ("messages", "sharegpt") else key
        if column and column != default:
            out[key] = column
    return out


def _chat_format(rows: list[dict], column: str) -> tuple[str, str]:
    """sharegpt or openai, from the keys of the conversation's first message."""
    for row in rows:
        turns = row.get(column)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            if "from" in turns[0] or "value" in turns[0]:
                return "sharegpt", f"column {column!r} holds turns with 'from'/'value' keys"
            if "role" in turns[0] or "content" in turns[0]:
                return "openai", f"column {column!r} holds turns with 'role'/'content' keys"
    return ("sharegpt" if column == "conversations" else "openai"), f"column {column!r} named like a conversation"


def guess_rows(rows: list[Any]) -> Guess:
    """The format and column mapping that fit ``rows`` (the first rows of a file)."""
    rows = [r for r in rows if not isinstance(r, Malformed)]
    if not rows:
        return Guess("alpaca", why="the file holds no readable rows (alpaca assumed)")
    objects = [r for r in rows if isinstance(r, dict)]
    if not objects:
        return Guess("alpaca", why=f"its first row is a {type(rows[0]).__name__}, not an object (alpaca assumed)")
    keys = {str(k) for row in objects for k in row}
    shown = ", ".join(sorted(keys)[:8])
    base = f"guessed from the first row's keys ({shown})"
    guess = _guess_keys(objects, keys)
    if guess is None:
        return Guess("alpaca", why=f"no known keys in the first rows ({shown}); alpaca assumed", keys=sorted(keys))
    fmt, found, reason = guess
    return Guess(fmt, _map(fmt, found), f"{base}: {reason}", sorted(keys))


def _guess_keys(rows: list[dict], keys: set[str]) -> tuple[str, dict[str, str | None], str] | None:
    label, chat = _find(keys, "label"), _find(keys, "messages")
    reply = _find(keys, "completion")
    if label and (reply or chat):
        found = {"label": label, "completion": reply, "prompt": _find(keys, "prompt", {reply or ""})}
        if chat and not reply:
            found = {"label": label, "messages": chat}
        return "kto", found, f"a {label!r} column next to a reply"
    chosen, rejected = _find(keys, "chosen"), _find(keys, "rejected")
    if chosen and rejected:
        found = {"chosen": chosen, "rejected": rejected, "prompt": _find(keys, "prompt")}
        return "preference", found, f"{chosen!r} and {rejected!r} columns"
    if chat:
        fmt, reason = _chat_format(rows, chat)
        return fmt, {"messages": chat, "system": _find(keys, "system")}, reason
    instruction, output = _find(keys, "instruction"), _find(keys, "output")
    if instruction and output and (instruction, output) != ("prompt", "answer"):  # prompt + answer: grpo prompts
        found = {"instruction": instruction, "output": output, "input": _find(keys, "input", {instruction}),
                 "system": _find(keys, "system")}
        return "alpaca", found, f"a question column {instruction!r} and an answer column {output!r}"
    prompt = _find(keys, "prompt")
    if prompt:
        return "prompt", {"prompt": prompt}, f"a prompt column {prompt!r} and no reply column (prompts for grpo/rloo)"
    text = _find(keys, "text")
    if text:
        return "text", {"text": text}, f"a text column {text!r}"
    return None


def sample_rows(path: Path, limit: int = SAMPLE_ROWS) -> list[tuple[int, Any]]:
    """(row number, record) of the first ``limit`` rows of a dataset file, unparsable ones as Malformed markers
    (DataError when the file cannot be read at all)."""
    return list(itertools.islice(iter_rows(path), limit))


def guess_file(path: Path) -> Guess:
    """The guess for a dataset file (or folder of files)."""
    return guess_rows([record for _, record in sample_rows(path)])
