"""Translations: one table of UI strings kept as data (webui/i18n/*.yaml, one file per tab, merged)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Translations:
    """key -> {language: text}."""

    table: dict[str, dict[str, str]]

    def text(self, key: str, lang: str) -> str:
        """The string for ``key`` in ``lang`` (English when missing; the key itself when unknown)."""
        entry = self.table.get(key)
        if entry is None:
            return key
        return entry.get(lang) or entry.get("en") or key


def load_translations(folder: Path | None = None) -> Translations:
    """Merge every webui/i18n/*.yaml; a key defined twice or missing a language is an error."""
    folder = folder or Path(__file__).resolve().parent / "i18n"
    table: dict[str, dict[str, str]] = {}
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key, entry in data.items():
            if key in table:
                raise ValueError(f"{path.name}: string {key!r} is defined twice")
            missing = [lang for lang in LANGUAGES if not isinstance(entry, dict) or not entry.get(lang)]
            if missing:
                raise ValueError(f"{path.name}: string {key!r} lacks {', '.join(missing)}")
            table[key] = entry
    return Translations(table)
