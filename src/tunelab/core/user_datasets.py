"""The user's own dataset registry ($TUNELAB_HOME/datasets/dataset_info.json): add, remove and rename entries.

The shipped data/dataset_info.json is read-only; the user's entries live beside it in the merged registry that
every surface reads (core.datasets.load_dataset_registry). Every change is a locked read-modify-write of the JSON
file, written atomically (temp file + rename). Uploaded files are copied under ``files/<content hash>/`` so an entry
never points at a browser upload's temporary file.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.core.datafiles import SUFFIXES, DataError
from tunelab.core.datasets import parse_entry, read_registry, user_registry_file
from tunelab.core.files import sha256_file, write_json_atomic
from tunelab.core.paths import resource_dir

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"


def files_dir() -> Path:
    """Where uploaded dataset files are kept."""
    return user_registry_file().parent / "files"


def shipped_names() -> set[str]:
    """Names of the datasets shipped with tunelab (which a user entry may not take)."""
    shipped = read_registry(resource_dir("data"))
    return set(shipped.specs) | set(shipped.errors)


def read_entries() -> dict[str, Any]:
    """The user's registry as raw entries ({} when there is none yet); DataError when it cannot be read."""
    path = user_registry_file()
    if not path.is_file():
        return {}
    read_registry(path)  # the same one-line errors as every other registry
    return json.loads(path.read_text(encoding="utf-8"))


@contextmanager
def _locked() -> Iterator[dict[str, Any]]:
    """The user's entries under an exclusive lock; written back atomically when the block ends without error."""
    path = user_registry_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".dataset_info.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = read_entries()
        yield entries
        write_json_atomic(path, entries)


def check_new_name(name: str, entries: dict[str, Any]) -> None:
    """DataError when ``name`` is not a valid, free dataset name."""
    if not NAME.match(name or ""):
        raise DataError(f"dataset name {name!r} is not valid: use {NAME_RULE}")
    if name in shipped_names():
        raise DataError(f"dataset name {name!r} is taken by a dataset shipped with tunelab; choose another name")
    if name in entries:
        raise DataError(f"dataset name {name!r} is already one of your datasets ({user_registry_file()}); "
                        f"choose another name or remove it first (tunelab data rm {name})")


def add_entry(name: str, entry: dict[str, Any]) -> None:
    """Add one entry (tunelab keys) under a new name; DataError for a bad or taken name or an invalid entry."""
    try:
        parse_entry(entry)
    except ValueError as exc:
        raise DataError(f"dataset {name!r}: {exc}") from None
    with _locked() as entries:
        check_new_name(name, entries)
        entries[name] = entry


def _user_entry(name: str, entries: dict[str, Any]) -> None:
    if name in entries:
        return
    if name in shipped_names():
        raise DataError(f"dataset {name!r} is shipped with tunelab and read-only; only your own datasets "
                        f"({user_registry_file()}) can be changed")
    yours = ", ".join(sorted(entries)) or "none yet"
    raise DataError(f"dataset {name!r} is not one of your datasets; yours: {yours}")


def remove_entry(name: str) -> None:
    """Remove one of the user's datasets (and its uploaded copy, unless another entry uses it)."""
    with _locked() as entries:
        _user_entry(name, entries)
        entry = entries.pop(name)
        _drop_unused_copy(entry, entries)


def rename_entry(old: str, new: str) -> None:
    """Give one of the user's datasets a new name."""
    with _locked() as entries:
        _user_entry(old, entries)
        check_new_name(new, entries)
        entries[new] = entries.pop(old)


def _drop_unused_copy(entry: Any, entries: dict[str, Any]) -> None:
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or not file.startswith("files/"):
        return
    if any(isinstance(e, dict) and e.get("file") == file for e in entries.values()):
        return
    folder = (user_registry_file().parent / file).parent
    if folder.parent == files_dir():
        shutil.rmtree(folder, ignore_errors=True)


def copy_upload(source: Path, filename: str | None = None) -> str:
    """Copy an uploaded file under files/<content hash>/ and return its path relative to the user registry."""
    name = Path(filename or source.name).name
    if Path(name).suffix.lower() not in SUFFIXES:
        raise DataError(f"{name}: unsupported file type {Path(name).suffix or '(none)'!r}; use {', '.join(SUFFIXES)}")
    digest = sha256_file(source)
    folder = files_dir() / digest[:16]
    target = folder / name
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.part"
        shutil.copyfile(source, partial)
        partial.replace(target)
    return str(target.relative_to(user_registry_file().parent))
