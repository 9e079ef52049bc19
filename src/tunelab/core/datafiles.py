"""Reading dataset files row by row (.json, .jsonl, .csv, .tsv, .parquet, .txt, or a folder of them) and guessing
their format. A row that cannot be parsed is yielded as a ``Malformed`` marker (so a check reports every bad row);
a file that cannot be read at all raises DataError naming it. Guessing a file's format is core.dataguess."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a JSON escape that can decode to half a character
SURROGATE = re.compile("[\ud800-\udfff]")


class DataError(ValueError):
    """Invalid data: the message names the file, the rows and the problems."""


@dataclass(frozen=True)
class Malformed:
    """A row that could not be parsed, and why."""

    reason: str


def iter_rows(path: Path, text_split: str = "auto") -> Iterator[tuple[int, Any]]:
    """(row number, record) of a dataset file or folder; DataError when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        files = dataset_files(path)
        if not files:
            raise DataError(f"{path}: a folder with no dataset files ({', '.join(SUFFIXES)})")
        kinds = {p.suffix.lower() for p in files}
        if len(kinds) > 1:
            raise DataError(f"{path}: the folder mixes file types {sorted(kinds)}; keep one type per dataset")
        offset = 0
        for file in files:
            number = 0
            for number, record in iter_rows(file, text_split):
                yield offset + number, record
            offset += number
        return
    try:
        yield from _READERS[_suffix(path)](path, text_split)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                        "save the file as UTF-8") from None
    except (OSError, csv.Error, RecursionError) as exc:
        raise DataError(f"{path}: cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from None


def dataset_files(folder: Path) -> list[Path]:
    """The dataset files of a folder (files with a known suffix; subfolders are skipped), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use {', '.join(SUFFIXES)}")
    return suffix


def _jsonl(path: Path, _: str) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, Malformed(f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            yield number, _whole_characters(record) if ESCAPED_SURROGATE.search(line) else record


def _json(path: Path, _: str) -> Iterator[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON lines saved as .json
            yield from _jsonl(path, _)
            return
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} / {"train": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    if ESCAPED_SURROGATE.search(text):
        yield from ((number, _whole_characters(record)) for number, record in enumerate(data, 1))
    else:
        yield from enumerate(data, 1)


def _whole_characters(record: Any) -> Any:
    """The record, or Malformed when one of its strings holds half a character (a lone ``\\udXXX`` escape: no
    tokenizer takes it)."""
    pending = [record]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending += value.values()
        elif isinstance(value, list):
            pending += value
        elif isinstance(value, str) and (half := SURROGATE.search(value)):
            return Malformed(f"a string holds half a character, an unpaired surrogate \\u{ord(half.group()):04x} "
                             f"(near {value[max(0, half.start() - 20) : half.start()]!r}); it is not valid Unicode text")
    return record


def _csv(path: Path, _: str) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for number, row in enumerate(reader, 1):
            if None in row or None in row.values():
                yield number, Malformed(f"{len(row) - (None in row) + len(row.get(None) or [])} fields where the header "
                                        f"has {len(reader.fieldnames or [])}")
            else:
                yield number, row


def _parquet(path: Path, _: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq  # lazily: only parquet needs it

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for anything that is not parquet
        raise DataError(f"{path}: not a readable parquet file: {str(exc)[:200]}") from None
    number = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def _txt(path: Path, text_split: str) -> Iterator[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if "\x00" in text:
        raise DataError(f"{path}: holds NUL bytes; is it a binary file?")
    if text_split == "auto":
        text_split = "paragraph" if "\n\n" in text.strip() else "line"
    pieces = text.split("\n\n") if text_split == "paragraph" else text.split("\n")
    yield from ((n, {"text": t.strip("\n")}) for n, t in enumerate(pieces, 1) if t.strip())


_READERS = {".json": _json, ".jsonl": _jsonl, ".csv": _csv, ".tsv": _csv, ".parquet": _parquet, ".txt": _txt}
