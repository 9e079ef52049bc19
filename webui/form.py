"""The run-config form, generated from RunConfig's schema: one component per field, no field written twice.

``field_specs()`` reads type, default, description and the ``group``/``main`` metadata of every RunConfig
field; ``make_component`` turns a spec into a Gradio component (elem_id = the field name); the helpers below
turn form values into a config mapping, a YAML preview and the equivalent ``tunelab train`` command.
"""

from __future__ import annotations

import math
import re
import shlex
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from pydantic import BaseModel

from tunelab.core.config import ConfigError, RunConfig, stage_fields, validate_config
from tunelab.core.schema import choices_of

GROUPS = ("model", "method", "stage", "data", "train", "distributed", "output")
ALWAYS_IN_PREVIEW = ("model", "stage", "method", "dataset")
HIDDEN = ("output_dir", "resume")  # set by the studio (the run directory, the Resume button), not typed in


@dataclass(frozen=True)
class FieldSpec:
    """What the form needs to know about one RunConfig field."""

    name: str
    kind: str  # choice | multichoice | bool | int | float | text | list
    default: Any
    description: str
    group: str
    main: bool
    optional: bool
    choices: tuple[str, ...] = ()
    minimum: float | None = None


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(annotation without None, whether None is allowed)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(get_args(annotation))
    return annotation, False


def _kind(annotation: Any, choices: list[str] | None) -> str:
    base, _ = _base_type(annotation)
    if get_origin(base) is Literal:
        return "choice"
    if get_origin(base) is list:
        return "multichoice" if choices else "list"
    return {bool: "bool", int: "int", float: "float"}.get(base, "text")


def _minimum(info: Any) -> float | None:
    for item in info.metadata:
        for attr in ("ge", "gt"):
            value = getattr(item, attr, None)
            if value is not None:
                return float(value)
    return None


def field_specs() -> list[FieldSpec]:
    """A spec per RunConfig field, in schema order (the studio-managed fields left out)."""
    return schema_specs(RunConfig, [name for name in RunConfig.model_fields if name not in HIDDEN])


def schema_specs(schema: type[BaseModel], names: list[str]) -> list[FieldSpec]:
    """A spec per named field of any config schema (RunConfig, EvalConfig, ExportConfig), in the order given."""
    specs = []
    for name in names:
        info = schema.model_fields[name]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        choices = tuple(choices_of(schema, name) or ())
        specs.append(FieldSpec(
            name=name, kind=_kind(info.annotation, list(choices)), default=info.default, description=info.description or "",
            group=str(extra.get("group", "other")), main=bool(extra.get("main")),
            optional=_base_type(info.annotation)[1], choices=choices, minimum=_minimum(info),
        ))
    return specs


def make_component(spec: FieldSpec, label: str, choices: list[Any] | None = None, value: Any = None,
                   checkboxes: bool = False, **kwargs: Any) -> Any:
    """The Gradio component for a field (initial ``value``: the schema default); ``choices`` ((label, value)
    pairs allowed) replaces the schema's; ``checkboxes`` shows a few fixed choices as a checkbox group."""
    import gradio as gr

    value = spec.default if value is None else value
    common = {"label": label, "info": spec.description, "elem_id": spec.name, "interactive": True, **kwargs}
    options = choices if choices is not None else list(spec.choices)
    if checkboxes and spec.kind == "multichoice":
        return gr.CheckboxGroup(options, value=list(value or []), **common)
    if spec.kind == "choice" or (spec.name in ("model", "template") and choices is not None):
        return gr.Dropdown(choices=options, value=value, allow_custom_value=spec.kind != "choice", **common)
    if spec.kind in ("multichoice", "list"):
        return gr.Dropdown(
            choices=options, value=list(value or []), multiselect=True, allow_custom_value=spec.kind == "list", **common,
        )
    if spec.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if spec.kind in ("int", "float"):  # a text box: what was typed stays visible until validation answers
        return gr.Textbox(value=show_number(value), lines=1, max_lines=1, **common)
    return gr.Textbox(value=value or "", lines=1, **common)


def show_number(value: Any) -> str:
    """A number as the form shows it ('' for None)."""
    return "" if value is None else str(value)


def parse_number(spec: FieldSpec, value: Any) -> Any:
    """A typed number as an int/float; ConfigError naming the field when it is not one (never a default)."""
    text = value.strip() if isinstance(value, str) else value
    if text in ("", None):
        if spec.optional:
            return None
        raise ConfigError(f"{spec.name}: empty; type a number (default {spec.default})")
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ConfigError(f"{spec.name}: {text!r} is not a number")
    try:
        number = text if not isinstance(text, str) else (int(text) if spec.kind == "int" else float(text))
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{spec.name}: {text!r} is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{spec.name}: {text!r} is not a finite number")
    if spec.kind == "int":
        if isinstance(number, float) and not number.is_integer():
            raise ConfigError(f"{spec.name}: {text!r} is not a whole number")
        return int(number)
    return float(number)


def _clean(spec: FieldSpec, value: Any) -> Any:
    """A form value as the config expects it (empty optional fields become None); ConfigError for a number
    field that does not hold one."""
    if spec.kind in ("int", "float"):
        return parse_number(spec, value)
    if isinstance(value, str):
        value = value.strip()
    if value in ("", None) or (spec.optional and value == []):
        return None if spec.optional else value
    if spec.kind in ("multichoice", "list") and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def cleaned_values(specs: list[FieldSpec], values: list[Any]) -> dict[str, Any]:
    """Form values (in spec order) as config values; a number field that does not hold one maps to its ConfigError."""
    mapping: dict[str, Any] = {}
    for spec, value in zip(specs, values):
        try:
            mapping[spec.name] = _clean(spec, value)
        except ConfigError as exc:
            mapping[spec.name] = exc
    return mapping


def options_mapping(specs: list[FieldSpec], values: list[Any], form_name: str) -> dict[str, Any]:
    """Form values -> an options mapping for any schema; ConfigError listing every field whose text is not a number."""
    mapping = cleaned_values(specs, values)
    problems = [str(v) for v in mapping.values() if isinstance(v, ConfigError)]
    if problems:
        raise ConfigError(f"{form_name}:\n  " + "\n  ".join(problems))
    return mapping


def form_to_mapping(specs: list[FieldSpec], values: list[Any], strict: bool = True) -> dict[str, Any]:
    """Form values (in spec order) -> a config mapping for validate_config; ConfigError listing every field
    whose text is not a number (an empty or unreadable number is refused, never replaced by the default).
    ``strict=False`` leaves such fields out instead (for previews that do not need them)."""
    mapping = cleaned_values(specs, values)
    used = set(stage_fields(str(mapping.get("stage") or "sft")))  # fields of other stages are hidden: not sent
    problems = [str(v) for name, v in mapping.items() if name in used and isinstance(v, ConfigError)]
    if problems and strict:
        raise ConfigError("form: invalid run config:\n  " + "\n  ".join(problems))
    return {name: value for name, value in mapping.items() if name in used and not isinstance(value, ConfigError)}


def stage_visibility(specs: list[FieldSpec], stage: str) -> list[bool]:
    """Per spec, whether the chosen stage uses the field (the form shows only those)."""
    used = set(stage_fields(stage))
    return [spec.name in used for spec in specs]


def config_to_values(specs: list[FieldSpec], config: RunConfig) -> list[Any]:
    """A config's values in spec order (to fill the form)."""
    values = []
    for spec in specs:
        value = getattr(config, spec.name)
        if spec.kind in ("int", "float"):
            value = show_number(value)
        values.append("" if value is None and spec.kind in ("text",) else value)
    return values


def validate(mapping: dict[str, Any]) -> tuple[RunConfig | None, str]:
    """(config, '') when valid, else (None, the schema's message)."""
    try:
        return validate_config(mapping, "form"), ""
    except ConfigError as exc:
        return None, str(exc)


def bad_fields(message: str) -> list[str]:
    """The RunConfig fields a validation message names (one problem per line, each 'field: ...')."""
    names = {m.group(1) for m in re.finditer(r"^\s*([a-z_0-9]+)[:.\[]", message, re.MULTILINE)}
    return [name for name in RunConfig.model_fields if name in names]


def non_defaults(config: RunConfig) -> dict[str, Any]:
    """The fields that differ from the defaults (plus the ones every preview shows), as plain data."""
    data = config.model_dump(mode="json")
    out = {}
    for name, info in RunConfig.model_fields.items():
        if name in HIDDEN and not data.get(name):
            continue
        default = info.default
        if name in ALWAYS_IN_PREVIEW or data[name] != (list(default) if isinstance(default, (list, tuple)) else default):
            out[name] = data[name]
    return out


def yaml_preview(config: RunConfig) -> str:
    """The config as a compact YAML file (fields that differ from the defaults)."""
    return yaml.safe_dump(non_defaults(config), sort_keys=False, allow_unicode=True)


def _override_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "none"
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def command_preview(config: RunConfig) -> str:
    """The equivalent ``tunelab train key=value ...`` command line."""
    parts = ["tunelab", "train"]
    for name, value in non_defaults(config).items():
        parts.append(shlex.quote(f"{name}={_override_value(value)}"))
    return " ".join(parts)


def load_yaml_config(text: str, source: str) -> RunConfig:
    """Parse an uploaded YAML config (ConfigError with a readable message)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    return validate_config(data, source)
