"""The events stream of a run: versioned JSON lines appended by the trainer, tailed by readers.

Each line is one object with ``v`` (schema version), ``type`` and ``time``. Types:
- ``train``: step, total_steps, epoch, loss, grad_norm, lr, tokens_seen, tokens_per_s (over the last logging
  interval), tokens_per_s_avg (since training began), peak_mem_gb, elapsed_s, eta_s,
  and every other number the stage's trainer logs, under trl's names (rewards/margins, kl, reward ...)
- ``eval``: step, eval_loss (and any other eval metric)
- ``data``: examples, dropped, truncated, tokens (what preprocessing kept and cut)
- ``status``: state (running, succeeded, failed, aborted) and message
- ``estimate``: the trainer's estimate at start (tunelab.core.estimate.Estimate: reserved_gib, tokens_per_s ...)
- ``prepare``: stage (libraries, demo, tokenizer, data, tokenize, model, trainer, steps, evaluate, save): the
  step the trainer is in before its first loss or after training; optional done/total (e.g. examples tokenized
  so far) and details; cpu_s (its CPU seconds so far, where the trainer knows it)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENTS_VERSION = 1
EVENT_TYPES = ("train", "eval", "data", "status", "metric", "estimate", "prepare")


class EventWriter:
    """Appends events to events.jsonl, one flushed line each."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        """Append one event and return it."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}; valid: {', '.join(EVENT_TYPES)}")
        event = {"v": EVENTS_VERSION, "type": type, "time": round(time.time(), 3), **fields}
        line = json.dumps(event, ensure_ascii=False, allow_nan=False, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
        return event


@dataclass
class EventTail:
    """Reads new events from a byte offset; never re-reads what it has seen. A partial last line waits."""

    path: Path
    offset: int = 0
    _partial: bytes = field(default=b"", repr=False)

    def read_new(self) -> list[dict[str, Any]]:
        """Events appended since the last call."""
        try:
            with Path(self.path).open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            if line.strip():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events
