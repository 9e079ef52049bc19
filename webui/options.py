"""Option widgets of the Evaluate and Export tabs, built from their schemas (EvalConfig, ExportConfig) the way the
Train tab is built from RunConfig: the widget kind, choices and initial value come from the field, so a tab's
defaults cannot drift from the CLI's and the YAML's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tunelab.webui import form
from tunelab.webui.studio import Studio


class SchemaOptions:
    """The widgets for ``names`` of ``schema``; labels from i18n ``<prefix>.<name>`` (info: ``<prefix>.<name>_info``,
    else the field's description), elem_id ``<prefix>_<name>``."""

    def __init__(self, schema: type[BaseModel], names: list[str], prefix: str):
        self.schema, self.prefix = schema, prefix
        self.specs = form.schema_specs(schema, names)
        self.widgets: dict[str, Any] = {}

    @property
    def names(self) -> list[str]:
        """The field names, in widget order."""
        return [spec.name for spec in self.specs]

    def build(self, studio: Studio, names: list[str], choices: dict[str, list[Any]] | None = None,
              checkboxes: tuple[str, ...] = ()) -> None:
        """Create (inside the current layout) the widgets of ``names``."""
        for spec in (s for s in self.specs if s.name in names):
            key = f"{self.prefix}.{spec.name}"
            label = studio.t(key) if key in studio.translations.table else spec.name
            info = studio.t(f"{key}_info") if f"{key}_info" in studio.translations.table else spec.description
            options = (choices or {}).get(spec.name)
            value = "" if spec.default is None and spec.kind in ("choice", "text") else spec.default
            self.widgets[spec.name] = studio.register(form.make_component(
                spec, label, options, value, checkboxes=spec.name in checkboxes, elem_id=f"{self.prefix}_{spec.name}",
                info=info,
            ))

    def inputs(self) -> list[Any]:
        """The widgets, in spec order (the event inputs)."""
        return [self.widgets[name] for name in self.names]

    def mapping(self, values: list[Any]) -> dict[str, Any]:
        """Widget values (in spec order) as options; ConfigError naming every field whose text is not a number."""
        return form.options_mapping(self.specs, values, f"{self.prefix} options")
