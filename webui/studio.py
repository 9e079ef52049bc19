"""The Studio object every tab builds against: shared services, the component registry and translations.

Tabs are modules in webui/tabs/ listed in app.TABS. Each exposes ``TITLE_KEY`` (an i18n key), ``build(studio)``
(called inside its ``gr.Tab``; creates components and their own events) and optionally ``connect(studio)``
(called after every tab is built, for events that reach into other tabs via ``studio.components``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.webui.i18n import Translations


@dataclass
class Studio:
    """Shared state of one running web studio."""

    runs_dir: Path
    translations: Translations
    lang: str = "en"
    components: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)

    def register(self, component: Any) -> Any:
        """Remember a component by its elem_id (for cross-tab events and tests); returns it."""
        key = getattr(component, "elem_id", None)
        if not key:
            raise ValueError("components registered with the studio need an elem_id")
        if key in self.components:
            raise ValueError(f"duplicate elem_id {key!r}")
        self.components[key] = component
        return component

    def t(self, key: str) -> str:
        """The text for ``key`` in the current language."""
        return self.translations.text(key, self.lang)
