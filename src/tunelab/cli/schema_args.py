"""Command-line options generated from a pydantic schema, so flags, help and defaults cannot drift from it.

Every option defaults to None (not given); the schema fills in its own default when the config is built.
"""

from __future__ import annotations

import argparse
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from tunelab.core.schema import choices_of


def _scalar_type(annotation: Any) -> type | None:
    """int or float for a (possibly optional) numeric field, else None (strings pass through)."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else None
    return annotation if annotation in (int, float) else None


def add_schema_options(group: Any, schema: type[BaseModel], names: list[str], flags: dict[str, str] | None = None) -> None:
    """Add ``--field-name`` options for ``names`` of ``schema`` (``flags`` renames some, e.g. to ``--no-base``)."""
    for name in names:
        field = schema.model_fields[name]
        default = field.default
        off = field.annotation is bool and default is True
        flag = (flags or {}).get(name) or ("--no-" if off else "--") + name.replace("_", "-")
        text = ", ".join(map(str, default)) if isinstance(default, list) else default
        shown = f" (default: {text})" if text not in (None, "") and not isinstance(default, bool) else ""
        help_text = ("Turn off: " if off else "") + (field.description or "") + shown
        if field.annotation is bool:
            action = "store_false" if off else "store_true"
            group.add_argument(flag, dest=name, action=action, default=None, help=help_text)
            continue
        choices = choices_of(schema, name)
        is_list = get_origin(field.annotation) is list
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if choices and not is_list:
            kwargs["choices"] = choices
        elif is_list and choices:
            kwargs["help"] = f"{help_text} Comma-separated: {', '.join(choices)}."
        numeric = _scalar_type(field.annotation)
        if numeric is not None:
            kwargs["type"] = numeric
        group.add_argument(flag, **kwargs)


def schema_values(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The options given on the command line (those left out take the schema's default)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
