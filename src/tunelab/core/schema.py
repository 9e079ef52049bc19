"""Readable validation for tunelab's typed schemas (run, eval and export configs).

Every problem becomes one line naming the field, the bad value and, for fixed choices, the valid ones.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

Schema = TypeVar("Schema", bound=BaseModel)


class ConfigError(ValueError):
    """A user error in a config; the message names the field, the bad value and the valid choices."""


def choices_of(schema: type[BaseModel], name: str) -> list[str] | None:
    """The allowed values of a Literal field (or of a list/optional of Literals), else None."""
    args = get_args(schema.model_fields[name].annotation)
    if args and all(isinstance(a, str) for a in args):
        return list(args)
    for arg in args:
        inner = get_args(arg)
        if inner and all(isinstance(a, str) for a in inner):
            return list(inner)
    return None


def describe_error(schema: type[BaseModel], error: Any) -> str:
    """One line for one pydantic error."""
    loc = [str(part) for part in error.get("loc", ())]
    name = loc[0] if loc else ""
    where = ".".join(loc)
    if error["type"] == "extra_forbidden":
        from tunelab.core.key_aliases import key_hint

        hint = key_hint(name, schema.model_fields)
        if hint:
            return f"{where}: unknown field; {hint}"
        close = difflib.get_close_matches(name, list(schema.model_fields), n=3, cutoff=0.75)
        return f"{where}: unknown field" + (f"; did you mean {', '.join(close)}?" if close else "")
    message = error["msg"].removeprefix("Value error, ")
    if not loc:
        return message
    value = error.get("input")
    choices = choices_of(schema, name) if name in schema.model_fields else None
    if error["type"] == "literal_error" and choices:
        return f"{where}: {value!r} is not valid; valid choices: {', '.join(choices)}"
    return f"{where}: {value!r} is not valid: {message}"


def validate_schema(schema: type[Schema], data: Any, source: str, what: str) -> Schema:
    """Build ``schema`` from a mapping; ConfigError listing every problem, one per line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of field: value, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = [describe_error(schema, error) for error in exc.errors()]
        head = f"invalid {what}" if source == what else f"{source}: invalid {what}"
        raise ConfigError(f"{head}:\n  " + "\n  ".join(lines)) from None
