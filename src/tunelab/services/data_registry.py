"""Registering a dataset (a file, an upload or a hub id) in the user's registry, shared by `tunelab data add` and the
Data tab: inspect the source, guess its format and columns, let the caller override them, try the first rows with
that reading, then save the entry. Every refusal is one line naming the file, the row or the field.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.datafiles import SUFFIXES, DataError, Malformed
from tunelab.core.dataguess import Guess, guess_rows, sample_rows
from tunelab.core.datasets import FORMATS, DatasetSpec, load_dataset_registry, parse_entry, validate_records
from tunelab.core.user_datasets import add_entry, check_new_name, copy_upload, read_entries

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_TIMEOUT_S = 10.0


@dataclass
class Source:
    """What a path or hub id holds: a local file (or folder) or a hub dataset, its first rows and the guess."""

    text: str
    path: Path | None
    hub: str | None
    rows: list[tuple[int, Any]]  # (row number, record) of the first rows
    guess: Guess
    columns: list[str] = field(default_factory=list)

    def default_name(self) -> str:
        """A dataset name made from the file name or hub id."""
        stem = self.path.stem if self.path else (self.hub or "dataset").rsplit("/", 1)[-1]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:64] or "dataset"


def inspect_source(text: str, split: str = "train") -> Source:
    """Read the first rows of a file, folder or hub dataset and guess how to read them (DataError if it cannot)."""
    text = (text or "").strip()
    if not text:
        raise DataError("give a dataset file (" + ", ".join(SUFFIXES) + "), a folder of them or a hub id owner/name")
    path = Path(text).expanduser()
    if path.exists():
        rows, hub = sample_rows(path), None
    elif HUB_ID.match(text) and path.suffix.lower() not in SUFFIXES:
        rows, hub, path = list(enumerate(hub_rows(text, split), 1)), text, None  # type: ignore[assignment]
    else:
        raise DataError(f"{text}: no such file or folder; give a dataset file ({', '.join(SUFFIXES)}), "
                        "a folder of them or a hub id owner/name")
    if not rows:
        raise DataError(f"{text}: the file holds no rows")
    guess = guess_rows([record for _, record in rows])
    return Source(text, path.resolve() if path else None, hub, rows, guess, guess.keys)


def hub_rows(hub_id: str, split: str = "train", limit: int = 20) -> list[Any]:
    """The first rows of a hub dataset (streamed); DataError in one line when the hub cannot be reached."""
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(hub_id, timeout=HUB_TIMEOUT_S)
        import datasets as hf_datasets

        stream = hf_datasets.load_dataset(hub_id, split=split, streaming=True)
        return list(itertools.islice(stream, limit))
    except Exception as exc:  # offline, unknown, gated, no such split: all the same to the user, said in one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"hub dataset {hub_id!r} could not be read ({type(exc).__name__}: {reason}); "
                        "download it and register the file instead") from None


def parse_columns(items: list[str] | str | None) -> dict[str, str]:
    """KEY=COLUMN pairs (a list, or one string split by commas/newlines) as a mapping; DataError for a bad pair."""
    if isinstance(items, str):
        items = [p for p in re.split(r"[,\n]", items)]
    out: dict[str, str] = {}
    for item in items or []:
        if not item.strip():
            continue
        key, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not key or not column:
            raise DataError(f"columns: {item.strip()!r} is not KEY=COLUMN (for example instruction=question)")
        out[key] = column
    return out


def plan_entry(source: Source, format: str | None = None, columns: dict[str, str] | None = None,
               description: str = "") -> tuple[dict[str, Any], str]:
    """The registry entry for ``source`` read as ``format`` with ``columns`` (guessed where not given), and a note
    saying what was guessed; DataError when that reading does not fit the first rows."""
    guess = source.guess
    if format and format not in FORMATS:
        raise DataError(f"format: {format!r} is not a format; valid: {', '.join(FORMATS)}")
    fmt = format or guess.format
    mapping = dict(guess.columns) if fmt == guess.format else {}
    mapping.update(columns or {})
    if source.columns:
        missing = {k: v for k, v in mapping.items() if v not in source.columns}
        if missing:
            key, column = next(iter(missing.items()))
            raise DataError(f"columns: {key}={column} names a column that {source.text} does not have; "
                            f"its columns: {', '.join(source.columns)}")
    entry: dict[str, Any] = {"hub": source.hub} if source.hub else {"file": str(source.path)}
    entry["format"] = fmt
    if mapping:
        entry["columns"] = mapping
    if description:
        entry["description"] = description
    try:
        spec = parse_entry(entry)
    except ValueError as exc:
        raise DataError(f"{source.text}: {exc}") from None
    note = f"format {fmt} given" if format and format != guess.format else f"format {fmt}: {guess.reason()}"
    _try_rows(source, spec, note)
    return entry, note


def _try_rows(source: Source, spec: DatasetSpec, note: str) -> None:
    """DataError naming the first row that cannot be parsed, or that the planned reading cannot convert."""
    broken = next(((n, r) for n, r in source.rows if isinstance(r, Malformed)), None)
    if broken:
        raise DataError(f"{source.text}: row {broken[0]}: {broken[1].reason}; fix the file and add it again")
    base = source.path.parent if source.path else None
    report = validate_records("new", spec, source.rows, source.text, base=base)
    if report.problems:
        raise DataError(f"{source.text}: {report.problems[0]} (read as {note}); set the format "
                        f"({', '.join(FORMATS)}) or the columns (KEY=COLUMN)")


def register(name: str, text: str, format: str | None = None, columns: dict[str, str] | None = None,
             description: str = "", upload_name: str | None = None) -> tuple[str, str]:
    """Save a dataset in the user's registry; ``upload_name``: ``text`` is an uploaded temporary file, copied into
    TUNELAB_HOME under that name. Returns (name, note saying what was guessed)."""
    check_new_name(name, read_entries())
    source = inspect_source(text)
    entry, note = plan_entry(source, format, columns, description)
    if upload_name is not None and source.path is not None:
        if source.path.is_dir():
            raise DataError(f"{text}: an upload must be one file")
        entry["file"] = copy_upload(source.path, upload_name)
    add_entry(name, entry)
    return name, note


def show_rows(name: str, limit: int = 5) -> tuple[DatasetSpec, list[Any]]:
    """The registry spec of ``name`` and its first raw rows (hub datasets: none, they are read when training)."""
    from tunelab.core.datafiles import iter_rows

    _, spec, local = load_dataset_registry().resolve(name)
    if local is None:
        return spec, []
    return spec, [record for _, record in itertools.islice(iter_rows(local, spec.text_split), limit)]
